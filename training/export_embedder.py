"""A sentence-transformers bi-encoder (BERT family, mean pooling) → the runtime's embedder
directory (:mod:`reranker.embedder`): one ONNX graph with the pooling and the L2 normalisation
in it, optionally int8 (dynamic), checked against sentence-transformers on sample texts."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from reranker.embedder import CONFIG_FILE, EmbedderConfig, TextEmbedder
from reranker.errors import ModelError
from reranker.training.tune_embedder import TUNING_FILE

PARITY_TEXTS = (
    "cordless drill",
    "DEWALT 20-Volt Max Lithium-Ion Cordless Drill | brand: DEWALT",
    "50 ft. Heavy Duty Garden Hose | color: Green",
    "toliet seat",
    "x",
)


class MeanPooled(torch.nn.Module):
    """Encoder → mean of the token states under the mask → unit length."""

    def __init__(self, encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)


def sentence_transformers_pooling(model_path: Path) -> str:
    """The pooling a sentence-transformers folder declares (``mean`` when it declares none)."""
    modules = model_path / "modules.json"
    if not modules.is_file():
        return "mean"
    for module in json.loads(modules.read_text()):
        if module.get("type", "").endswith("Pooling"):
            cfg = json.loads((model_path / module["path"] / "config.json").read_text())
            modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
            return "mean" if modes == ["pooling_mode_mean_tokens"] else ",".join(modes)
    return "mean"


def export_embedder(
    model_path: str | Path,
    output: str | Path,
    *,
    max_length: int = 64,
    int8: bool = True,
    per_channel: bool = True,
    overwrite: bool = False,
    metadata: dict | None = None,
    parity_texts: Sequence[str] = PARITY_TEXTS,
) -> Path:
    """Export a mean-pooling bi-encoder for the dense first stage; returns the directory.
    ``int8``: dynamic int8 (``per_channel``: a weight scale per output column; on train queries
    it retrieves within 0.001–0.002 of fp32, a per-tensor scale lost more).

    The config stores the largest difference of the exported graph (the int8 one too, as cosine
    similarity) from torch on ``parity_texts``."""
    model_path, out = Path(model_path), Path(output)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"{out} exists and is not empty; pass --overwrite to replace it")
    pooling = sentence_transformers_pooling(model_path)
    if pooling != "mean":
        raise ModelError(f"{model_path} pools by {pooling!r}; only mean pooling is exported")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{model_path}: a fast tokenizer (tokenizer.json) is needed for serving")
    encoder = AutoModel.from_pretrained(str(model_path), attn_implementation="eager").eval()
    graph = MeanPooled(encoder).eval()
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmpdir:
        tmp = Path(tmpdir)
        sample = tokenizer(
            list(parity_texts),
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            reference = graph(sample["input_ids"], sample["attention_mask"]).numpy()
            torch.onnx.export(
                graph,
                (sample["input_ids"], sample["attention_mask"]),
                str(tmp / "model.onnx"),
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "embedding": {0: "batch"},
                },
                opset_version=17,
                dynamo=False,
            )
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        file = "model.onnx"
        if int8:
            from reranker.training.export import _quantize

            _quantize(tmp / "model.onnx", tmp / "model.int8.onnx", per_channel)
            (tmp / "model.onnx").unlink()
            file = "model.int8.onnx"
        tuning = model_path / TUNING_FILE  # written by python -m reranker.training.tune_embedder
        tuned = json.loads(tuning.read_text()) if tuning.is_file() else None
        meta = {
            "base_model": tuned["base_model"] if tuned else model_path.name,
            **({"tuning": tuned} if tuned else {}),
            **(metadata or {}),
            "pooling": "mean, L2-normalised",
            "variant": "int8" if int8 else "fp32",
        }
        config = EmbedderConfig(
            max_length=max_length,
            dim=int(reference.shape[1]),
            file=file,
            pad_token_id=int(tokenizer.pad_token_id or 0),
            metadata=meta,
        )
        (tmp / CONFIG_FILE).write_text(config.to_json())
        runtime = TextEmbedder(tmp)
        got = runtime.embed(list(parity_texts))
        cosine = (got * reference).sum(1)
        meta["parity"] = {
            "min_cosine_vs_torch": float(cosine.min()),
            "max_abs_diff_vs_torch": float(np.abs(got - reference).max()),
        }
        config = EmbedderConfig(**{**config.__dict__, "metadata": meta})
        (tmp / CONFIG_FILE).write_text(config.to_json())
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tmp, out)
    return out
