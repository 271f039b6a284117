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
        config = _write_config(
            tmp,
            tokenizer,
            model,
            metadata,
            graph="cls-only last layer" if cls_only else "full",
            max_length=max_length,
            fields=tuple(fields),
            files=files,
            default_variant="int8" if int8 else "fp32",
        )

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


def _write_config(
    tmp: Path, tokenizer, model, metadata: dict | None, *, graph: str, **settings
) -> ModelConfig:
    """``tokenizer.json`` and ``reranker.json`` of an export: ``settings`` as
    :class:`ModelConfig` takes them, the pad token from the tokenizer, and the graph kind and
    the model's shape figures added to ``metadata``."""
    tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
    config = ModelConfig(
        pad_token_id=int(tokenizer.pad_token_id or 0),
        metadata=dict(metadata or {}, graph=graph, architecture=architecture(model.config)),
        **settings,
    )
    (tmp / CONFIG_FILE).write_text(config.to_json())
    return config


def _write_parity(tmp: Path, config: ModelConfig, runtime, diffs, int8: bool, groups) -> None:
    """Store the parity figures in the config: fp32 vs torch (``diffs``) and, with judged
    ``groups``, the int8 variant's ranking against ``runtime`` (the fp32 one)."""
    parity = {"fp32_vs_torch_max_abs_diff": float(np.max(diffs))}
    if int8 and groups:
        for variant in config.files:
            if variant != "fp32":
                other = type(runtime)(tmp, variant=variant)
                key = "int8_vs_fp32" if variant == "int8" else f"{variant}_vs_fp32"
                parity[key] = ranking_agreement(runtime, other, groups)
    meta = dict(config.metadata, parity=parity)
    config = ModelConfig(**{**config.__dict__, "metadata": meta})
    (tmp / CONFIG_FILE).write_text(config.to_json())


def _install(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tmp, out)


def _quantize(src: Path, dst: Path, per_channel: bool, nodes: Sequence[str] = ()) -> None:
    """Dynamic int8 (weights int8, activations quantised per call) of every MatMul, or of the
    named ``nodes`` only. Weights in 7 bits (``reduce_range``: within ±64): CPUs without VNNI
    add pairs of uint8 x int8 products in saturating 16-bit sums, which full-range weights can
    overflow (:mod:`reranker.training.requantize`); with 7 bits every CPU computes the same."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        src,
        dst,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        reduce_range=True,
        nodes_to_quantize=list(nodes) or None,
    )


def _weight_only_int8(src: Path, dst: Path) -> None:
    """A copy of ``src`` whose weight matrices (and embedding tables) are stored as int8 with a
    float32 scale per output column (per row for tables) and dequantised in the graph
    (``DequantizeLinear``): a quarter of the size, float32 arithmetic. For the encoder that
    makes the stored product states, where dynamic int8 (activations quantised per call, one
    scale per tensor) cost ranking quality on dev."""
    import onnx
    from onnx import helper, numpy_helper

    from reranker.training.latejoint import quantize_weight

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    targets: dict[str, int] = {}  # initializer name -> axis of its scales
    for n in g.node:
        if n.op_type == "MatMul" and n.input[1] in inits:
            targets[n.input[1]] = 1
        elif n.op_type == "Gather" and n.input[0] in inits:
            targets[n.input[0]] = 0
    nodes = []
    for name, axis in targets.items():
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        if w.ndim != 2:
            continue
        if axis == 1:  # a weight: a scale per output column
            q, scale = quantize_weight(w, 127)
        else:  # an embedding table: a scale per row
            q, scale = quantize_weight(w.T, 127)
            q = q.T.copy()
        g.initializer.remove(inits[name])
        g.initializer.extend(
            [
                numpy_helper.from_array(q, f"{name}_q"),
                numpy_helper.from_array(scale, f"{name}_scale"),
                numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{name}_zp"),
            ]
        )
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_q", f"{name}_scale", f"{name}_zp"],
                [name],
                axis=axis,
                name=f"{name}_dequantize",
            )
        )
    for i, n in enumerate(nodes):
        g.node.insert(i, n)
    onnx.save(model, str(dst))


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
    """A late-interaction student (``distill --arch late``) → per variant a product encoder
    (``encoder.onnx`` fp32, ``encoder.w8.onnx`` int8 weights) and a joint graph with the query's
    encoder in it (``joint.onnx``, ``joint.int8.onnx``)."""
    import onnx

    from reranker.late import FLOAT_QUERY, FLOAT_QUERY_FILE, LateCrossEncoder, dequantize_states
    from reranker.training.latebert import LATE_FILE, EncoderGraph, LateBert
    from reranker.training.latejoint import DYNAMIC_INT8_NODES, build_joint, with_query_encoder
    from reranker.training.requantize import requantize

    settings = json.loads((Path(model_path) / LATE_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_path), attn_implementation="eager"
    ).eval()
    late = LateBert(model).eval()
    max_length, query_max = settings["max_length"], settings["query_max_length"]
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmpdir:
        tmp = Path(tmpdir)
        p = tokenizer([t for _, t in parity_pairs], padding=True, return_tensors="pt")
        with torch.no_grad():
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
        # joint graphs carry the query's encoder (one call per query); the product encoder
        # (index time) is a file of its own
        encoder = onnx.load(str(tmp / "encoder.onnx"))
        onnx.save(
            with_query_encoder(encoder, build_joint(late, int8=False)), str(tmp / "joint.onnx")
        )
        files = {"fp32": "joint.onnx"}
        encoders = {"fp32": "encoder.onnx"}
        if int8:
            # the products' attention step is built integer (stored int8 states); the
            # per-pair [CLS] layer and the query encoder are quantised dynamically; the product
            # encoder keeps float32 arithmetic on int8-stored weights (dynamic int8 there cost
            # ranking quality: agreement with fp32 on dev pairs 0.912 against 0.957)
            onnx.save(build_joint(late, int8=True), str(tmp / "joint.int8.base.onnx"))
            _quantize(
                tmp / "joint.int8.base.onnx",
                tmp / "joint.int8.part.onnx",
                per_channel,
                nodes=DYNAMIC_INT8_NODES,
            )
            _quantize(tmp / "encoder.onnx", tmp / "encoder.int8.onnx", per_channel)
            onnx.save(
                with_query_encoder(
                    onnx.load(str(tmp / "encoder.int8.onnx")),
                    onnx.load(str(tmp / "joint.int8.part.onnx")),
                ),
                str(tmp / "joint.int8.onnx"),
            )
            # the same graph with the query's encoder in float32 arithmetic on its int8 weights
            # (no activation quantised there: the query computed as the products are)
            requantize(tmp / "joint.int8.onnx", tmp / FLOAT_QUERY_FILE, "query_encoder/")
            for name in ("joint.int8.base.onnx", "joint.int8.part.onnx", "encoder.int8.onnx"):
                (tmp / name).unlink()
            _weight_only_int8(tmp / "encoder.onnx", tmp / "encoder.w8.onnx")
            files["int8"] = "joint.int8.onnx"
            encoders["int8"] = "encoder.w8.onnx"
            files[FLOAT_QUERY] = FLOAT_QUERY_FILE
            encoders[FLOAT_QUERY] = "encoder.w8.onnx"
        config = _write_config(
            tmp,
            tokenizer,
            model,
            metadata,
            graph=(
                "late interaction: product encoder (L-1 layers) + query encoder and packed"
                " [CLS]-only joint last layer, folded (no product keys/values)"
            ),
            max_length=max_length,
            fields=tuple(fields),
            files=files,
            default_variant="int8" if int8 else "fp32",
            max_query_tokens=query_max,
            architecture="late",
            encoder_files=encoders,
        )

        # fp32 graph against torch on the same (stored, int8-per-token) product states
        diffs = []
        runtime = LateCrossEncoder(tmp, variant="fp32")
        for query, text in parity_pairs:
            qe = tokenizer([query], truncation=True, max_length=query_max, return_tensors="pt")
            stored = runtime.product_inputs([text])
            with torch.no_grad():
                qs = late.encode(qe["input_ids"], qe["attention_mask"])
                ps = torch.from_numpy(dequantize_states(stored[0]))[None]
                ref = late.joint(qs, qe["attention_mask"], ps, torch.ones(ps.shape[:2]))
            got = runtime.score_ids(runtime.query_ids(query), stored).raw[0]
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
