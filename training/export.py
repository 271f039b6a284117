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
from reranker.training import fastbert

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
    cls_only: bool = True,
    overwrite: bool = False,
    metadata: dict | None = None,
    parity_pairs: Sequence[tuple[str, str]] = DEFAULT_PARITY_PAIRS,
    agreement_groups: Sequence[tuple[str, Sequence[str]]] = (),
) -> Path:
    """Export a fine-tuned cross-encoder for serving; returns the model directory.

    ``cls_only``: for BERT-family models, export the graph of :mod:`fastbert` (the last layer
    computed at ``[CLS]`` only; same scores, less work). ``agreement_groups``: (query, product
    texts) lists, e.g. the judged products of dev queries, on which the int8 model's ranking is
    compared with the fp32 one's; the figures are printed by the CLI and stored in the config.
    """
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ModelError(f"{out} exists and is not empty; pass --overwrite to replace it")
    from reranker.training.latebert import LATE_FILE

    if (Path(model_path) / LATE_FILE).is_file():
        return export_late(
            model_path,
            out,
            fields=fields,
            int8=int8,
            per_channel=per_channel,
            metadata=metadata,
            parity_pairs=parity_pairs,
            agreement_groups=agreement_groups,
        )
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
        graph = model
        cls_only = cls_only and fastbert.supports(model) and "token_type_ids" in names
        if cls_only:
            graph = fastbert.ClsOnlyBert(model).eval()
        with torch.no_grad():
            torch.onnx.export(
                graph,
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
            _quantize(tmp / "model.onnx", tmp / "model.int8.onnx", per_channel)
            files["int8"] = "model.int8.onnx"
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        config = ModelConfig(
            max_length=max_length,
            fields=tuple(fields),
            files=files,
            default_variant="int8" if int8 else "fp32",
            pad_token_id=int(tokenizer.pad_token_id or 0),
            metadata=dict(
                metadata or {},
                graph="cls-only last layer" if cls_only else "full",
                architecture=architecture(model.config),
            ),
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
        _write_parity(tmp, config, runtime, diffs, int8, agreement_groups)

        _install(tmp, out)
    return out


def _write_parity(tmp: Path, config: ModelConfig, runtime, diffs, int8: bool, groups) -> None:
    """Store the parity figures in the config: fp32 vs torch (``diffs``) and, with judged
    ``groups``, the int8 variant's ranking against ``runtime`` (the fp32 one)."""
    parity = {"fp32_vs_torch_max_abs_diff": float(np.max(diffs))}
    if int8 and groups:
        int8_model = type(runtime)(tmp, variant="int8")
        parity["int8_vs_fp32"] = ranking_agreement(runtime, int8_model, groups)
    meta = dict(config.metadata, parity=parity)
    config = ModelConfig(**{**config.__dict__, "metadata": meta})
    (tmp / CONFIG_FILE).write_text(config.to_json())


def _install(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tmp, out)


def _quantize(src: Path, dst: Path, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel)


def _inline_shared_weights(path: Path) -> None:
    """The exporter writes a weight used twice (the last layer's key and value projections, for
    query and for products) once, the second use through an ``Identity``; the quantizer only
    quantizes a MatMul whose weight is an initializer, so point such MatMuls at it directly."""
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name for i in g.initializer}
    alias = {
        n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input[0] in inits
    }
    if not alias:
        return
    keep = [n for n in g.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    del g.node[:]
    g.node.extend(keep)
    onnx.save(model, str(path))


def export_late(
    model_path: str | Path,
    out: Path,
    *,
    fields: Sequence[str] = (),
    int8: bool = True,
    per_channel: bool = False,
    metadata: dict | None = None,
    parity_pairs: Sequence[tuple[str, str]] = DEFAULT_PARITY_PAIRS,
    agreement_groups: Sequence[tuple[str, Sequence[str]]] = (),
) -> Path:
    """A late-interaction student (``distill --arch late``) → ``encoder.onnx`` and
    ``joint.onnx`` (variant fp32), ``encoder.int8.onnx`` and ``joint.int8.onnx`` (int8)."""
    from reranker.late import LateCrossEncoder
    from reranker.training.latebert import LATE_FILE, EncoderGraph, JointGraph, LateBert

    settings = json.loads((Path(model_path) / LATE_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_path), attn_implementation="eager"
    ).eval()
    late = LateBert(model).eval()
    max_length, query_max = settings["max_length"], settings["query_max_length"]
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmpdir:
        tmp = Path(tmpdir)
        q = tokenizer(["cordless drill"], return_tensors="pt")
        p = tokenizer([t for _, t in parity_pairs], padding=True, return_tensors="pt")
        with torch.no_grad():
            qs = late.encode(q["input_ids"], q["attention_mask"])
            ps = late.encode(p["input_ids"], p["attention_mask"])
            torch.onnx.export(
                EncoderGraph(late).eval(),
                (p["input_ids"], p["attention_mask"]),
                str(tmp / "encoder.onnx"),
                input_names=["input_ids", "attention_mask"],
                output_names=["states"],
                dynamic_axes={
                    n: {0: "batch", 1: "sequence"}
                    for n in ("input_ids", "attention_mask", "states")
                },
                opset_version=17,
                dynamo=False,
            )
            torch.onnx.export(
                JointGraph(late).eval(),
                (qs, q["attention_mask"], ps, p["attention_mask"]),
                str(tmp / "joint.onnx"),
                input_names=["query_states", "query_mask", "product_states", "product_mask"],
                output_names=["logits"],
                dynamic_axes={
                    "query_states": {0: "query_rows", 1: "query_tokens"},
                    "query_mask": {0: "query_rows", 1: "query_tokens"},
                    "product_states": {0: "batch", 1: "product_tokens"},
                    "product_mask": {0: "batch", 1: "product_tokens"},
                    "logits": {0: "batch"},
                },
                opset_version=17,
                dynamo=False,
            )
        _inline_shared_weights(tmp / "joint.onnx")
        files = {"fp32": "joint.onnx"}
        encoders = {"fp32": "encoder.onnx"}
        if int8:
            _quantize(tmp / "joint.onnx", tmp / "joint.int8.onnx", per_channel)
            _quantize(tmp / "encoder.onnx", tmp / "encoder.int8.onnx", per_channel)
            files["int8"] = "joint.int8.onnx"
            encoders["int8"] = "encoder.int8.onnx"
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        config = ModelConfig(
            max_length=max_length,
            fields=tuple(fields),
            files=files,
            default_variant="int8" if int8 else "fp32",
            pad_token_id=int(tokenizer.pad_token_id or 0),
            max_query_tokens=query_max,
            architecture="late",
            encoder_files=encoders,
            metadata=dict(
                metadata or {},
                graph="late interaction: encoder (L-1 layers) + [CLS]-only joint last layer",
                architecture=architecture(model.config),
            ),
        )
        (tmp / CONFIG_FILE).write_text(config.to_json())

        diffs = []
        runtime = LateCrossEncoder(tmp, variant="fp32")
        for query, text in parity_pairs:
            qe = tokenizer([query], truncation=True, max_length=query_max, return_tensors="pt")
            pe = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
            with torch.no_grad():
                ref = late(
                    qe["input_ids"], qe["attention_mask"], pe["input_ids"], pe["attention_mask"]
                )
            # float32 states here: the runtime rounds product states to float16 (as stored)
            states = runtime.encode_ids(runtime.products_enc.encode([text]))
            got = runtime.score_ids(runtime.query_ids(query), states).raw[0]
            diffs.append(abs(float(got) - ref[0, 0].item()))
        _write_parity(tmp, config, runtime, diffs, int8, agreement_groups)
        _install(tmp, out)
    return out


def architecture(config) -> dict:
    """The shape figures a benchmark needs to count a model's arithmetic."""
    return {
        "model_type": config.model_type,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "intermediate": config.intermediate_size,
        "heads": config.num_attention_heads,
    }


def ranking_agreement(reference, other, groups: Sequence[tuple[str, Sequence[str]]]) -> dict:
    """How closely ``other`` ranks like ``reference`` (two runtime models) over query groups:
    the fraction of product pairs ordered the same way (ties in either count 0.5), the fraction
    of queries with the same top product, and the largest raw-score difference."""
    same, pairs, top1, diff = 0.0, 0, 0, 0.0
    for query, texts in groups:
        a = reference.score(query, texts).raw.astype(np.float64)
        b = other.score(query, texts).raw.astype(np.float64)
        diff = max(diff, float(np.max(np.abs(a - b))))
        top1 += int(np.argmax(a) == np.argmax(b))
        da = np.sign(a[:, None] - a[None, :])
        db = np.sign(b[:, None] - b[None, :])
        upper = np.triu_indices(len(texts), 1)
        agree = np.where((da == 0) | (db == 0), 0.5, (da == db).astype(np.float64))[upper]
        same += float(agree.sum())
        pairs += len(agree)
    return {
        "queries": len(groups),
        "pair_agreement": same / pairs if pairs else None,
        "top1_agreement": top1 / len(groups) if groups else None,
        "max_abs_diff": diff,
    }
