"""Hugging Face sequence-classification model → the runtime's model directory.

Writes ``model.onnx`` (fp32), optionally ``model.int8.onnx`` (dynamic int8), ``tokenizer.json`` and
``reranker.json``; checks the fp32 export against torch on sample pairs and stores the figure.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reranker.crossencoder import CONFIG_FILE, CrossEncoder, ModelConfig
from reranker.errors import ModelError

DEFAULT_PARITY_PAIRS = [
    ("cordless drill", "DEWALT 20-Volt Max Lithium-Ion Cordless Drill | brand: DEWALT"),
    ("garden hose", "50 ft. Heavy Duty Garden Hose | color: Green"),
    ("led light bulb 60 watt", "60-Watt Equivalent A19 Soft White LED Light Bulb (4-Pack)"),
    ("x", "Toilet Seat | material: Plastic"),
]


def trained_fields(model_path: str | Path) -> list[str]:
    """The product fields a model was trained to read, from its training settings file."""
    for name in ("distill_args.json", "teacher_args.json"):
        path = Path(model_path) / name
        if path.is_file():
            return list(json.loads(path.read_text()).get("fields", []))
    raise ModelError(f"cannot tell which product fields {model_path} reads; pass --fields")


def export_model(
    model_path: str | Path,
    output: str | Path,
    *,
    max_length: int = 64,
    fields: Sequence[str] = (),
    int8: bool = True,
    per_channel: bool = False,
    overwrite: bool = False,
    metadata: dict | None = None,
    parity_pairs: Sequence[tuple[str, str]] = DEFAULT_PARITY_PAIRS,
) -> Path:
    """Export a fine-tuned cross-encoder for serving; returns the model directory."""
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ModelError(f"{out} exists and is not empty; pass --overwrite to replace it")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{model_path}: a fast tokenizer (tokenizer.json) is needed for serving")
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_path), attn_implementation="eager"
    ).eval()
    if model.config.num_labels != 1:
        raise ModelError(f"{model_path} has {model.config.num_labels} labels; a reranker has 1")

    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmpdir:
        tmp = Path(tmpdir)
        sample = tokenizer(
            [q for q, _ in parity_pairs],
            [t for _, t in parity_pairs],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
        dynamic = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
        with torch.no_grad():
            torch.onnx.export(
                model,
                tuple(sample[n] for n in names),
                str(tmp / "model.onnx"),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=dynamic,
                opset_version=17,
                dynamo=False,
            )
        files = {"fp32": "model.onnx"}
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(
                tmp / "model.onnx",
                tmp / "model.int8.onnx",
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
            )
            files["int8"] = "model.int8.onnx"
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        config = ModelConfig(
            max_length=max_length,
            fields=tuple(fields),
            files=files,
            default_variant="int8" if int8 else "fp32",
            pad_token_id=int(tokenizer.pad_token_id or 0),
            metadata=dict(metadata or {}),
        )
        (tmp / CONFIG_FILE).write_text(config.to_json())

        # Parity: the exported fp32 graph against torch on the same pairs, one query at a time.
        diffs = []
        runtime = CrossEncoder(tmp, variant="fp32")
        for q, t in parity_pairs:
            enc = tokenizer(q, t, truncation=True, max_length=max_length, return_tensors="pt")
            with torch.no_grad():
                ref = model(**enc).logits[0, 0].item()
            diffs.append(abs(float(runtime.score(q, [t]).raw[0]) - ref))
        meta = dict(config.metadata, parity={"fp32_vs_torch_max_abs_diff": float(np.max(diffs))})
        config = ModelConfig(**{**config.__dict__, "metadata": meta})
        (tmp / CONFIG_FILE).write_text(config.to_json())

        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tmp, out)
    return out
