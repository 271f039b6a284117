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


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory, catalog_csv) -> Path:
    from reranker.catalog import read_catalog

    catalog = read_catalog(catalog_csv)
    texts = [p.text() for p in catalog.products] + ["cordless drill garden hose light bulb"]
    return build_tiny_hf_model(tmp_path_factory.mktemp("hf") / "tiny", texts)


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
