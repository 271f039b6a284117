"""Shared fixtures. Nothing here touches the network: tiny models are built locally."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def catalog_csv() -> Path:
    return DATA / "catalog.csv"


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, catalog_csv) -> Path:
    from reranker.index.build import index_catalog

    out = tmp_path_factory.mktemp("index") / "idx"
    index_catalog(catalog_csv, out)
    return out


@pytest.fixture
def index_dir(built_index, tmp_path) -> Path:
    """A private copy of the tiny index for tests that may modify it."""
    dst = tmp_path / "idx"
    shutil.copytree(built_index, dst)
    return dst


def build_tiny_hf_model(out: Path, texts: list[str], seed: int = 0) -> Path:
    """A random 2-layer BERT cross-encoder with a WordPiece vocabulary learnt from ``texts``."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(texts, vocab_size=400, min_frequency=1, show_progress=False)
    wp.save_model(str(out))
    tokenizer = BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
        initializer_range=0.3,
    )
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_gguf(path: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random 2-layer Llama written as a GGUF file the way SmolLM2's is (llama architecture,
    a byte-level BPE "gpt2" tokenizer with no separator token, no classification head), so the
    teacher's GGUF path and its one-prompt pair form run on something tiny."""
    import gguf
    import numpy as np

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    rest = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]  # GPT-2 bytes
    merges = ["Ġ d", "r i", "l l", "o r"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + chars + [m.replace(" ", "") for m in merges]
    heads, kv, ffn = 4, 2, 2 * hidden
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    rng = np.random.default_rng(seed)

    def weight(*shape):
        return (rng.normal(size=shape) * 0.2).astype(np.float32)

    kv_dim = kv * hidden // heads
    w.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    for i in range(layers):
        for name, shape in (
            ("attn_q", (hidden, hidden)),
            ("attn_k", (kv_dim, hidden)),
            ("attn_v", (kv_dim, hidden)),
            ("attn_output", (hidden, hidden)),
            ("ffn_gate", (ffn, hidden)),
            ("ffn_up", (ffn, hidden)),
            ("ffn_down", (hidden, ffn)),
        ):
            w.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory, catalog_csv) -> Path:
    from reranker.catalog import read_catalog

    catalog = read_catalog(catalog_csv)
    texts = [p.text() for p in catalog.products] + ["cordless drill garden hose light bulb"]
    return build_tiny_hf_model(tmp_path_factory.mktemp("hf") / "tiny", texts)


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory, tiny_hf_model):
    """The tiny BERT's encoder exported as a mean-pooling embedder (fp32, so exact)."""
    from reranker.training.export_embedder import export_embedder

    out = tmp_path_factory.mktemp("embedder") / "tiny-embedder"
    return export_embedder(
        tiny_hf_model, out, max_length=32, int8=False, metadata={"name": "tiny-embedder"}
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_hf_model) -> Path:
    """The tiny model exported to the runtime's format (fp32 + int8)."""
    from reranker.training.export import export_model

    out = tmp_path_factory.mktemp("model") / "tiny-onnx"
    return export_model(
        tiny_hf_model,
        out,
        max_length=32,
        fields=("brand", "color"),
        metadata={"name": "tiny-test-model"},
    )


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model, dst)
    return dst


def write_judged_file(path: Path, rows) -> Path:
    """A judged-pairs Parquet file from (query, product_id, relevance) rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = ("query", "product_id", "relevance")
    pq.write_table(pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)}), path)
    return path


@pytest.fixture(scope="session")
def write_judged():
    return write_judged_file


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(*args: str) -> tuple[subprocess.Popen, str]:
    """`reranker serve ARGS` as a real process on a free loopback port, once it answers
    /healthz; returns (process, url). The caller terminates it."""
    import time

    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reranker.cli", "serve", *args, "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError(f"reranker serve exited: {proc.stderr.read()}") from None
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("reranker serve did not answer /healthz in 30 s")


@pytest.fixture
def serve_process(built_index, tiny_model):
    """`reranker serve` as a real process on a free loopback port; yields (url, process)."""
    proc, url = start_serve("--index-dir", str(built_index), "--model", str(tiny_model))
    try:
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)
