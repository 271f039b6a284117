"""Requantise a dynamic-int8 ONNX graph's 8-bit weights to 7 bits, so that AVX2 CPUs compute it
exactly.

ONNX Runtime multiplies uint8 activations by int8 weights. Without VNNI (AVX2, AVX-512 without
VNNI) its kernel adds the products of two neighbouring pairs in a *saturating* 16-bit sum: with
weights up to ±127, ``255 * 127 * 2`` = 64,770 overflows 32,767 and is clipped, so the same graph
gives other scores on those CPUs than on CPUs with VNNI (which sum in 32 bits). With weights in
±64 (``quantize_dynamic(..., reduce_range=True)``'s range) no pair sum can overflow, and every CPU
computes the same integers.

Each ``MatMulInteger`` weight (symmetric int8, per channel or per tensor, zero point 0, as
``reranker export`` writes them) becomes ``round(w * 64 / max|w|)`` with its scale multiplied by
``max|w| / 64``, so that the dequantised weight stays within half a 7-bit step of the 8-bit one.
Graphs already in range are left as they are.

``--float-prefix PREFIX``: the ``MatMulInteger`` nodes whose names start with ``PREFIX`` are
instead turned into float32 arithmetic on their int8-stored weights (``DequantizeLinear`` of the
same 8-bit weight, then ``MatMul``; a late student's sessions fold the weights once, with
``session.disable_quant_qdq``): no activation is quantised there, nothing can saturate, and the
file stays as small. Tried on the late student's query encoder (``--float-prefix
query_encoder/``, computing then as its product encoder does): its int8 - fp32 pair accuracy on
dev went from −0.0060 to −0.0015, but the default built on it ranked a little worse on both
query sets and cost ~2 ms more on an AVX2 CPU; not shipped (``training/REPORT.md``, sixteenth
session). Nor its per-pair ``[CLS]`` layer (``--float-prefix o. --float-prefix i. --float-prefix
o2. --float-prefix pool.``): −0.0021, and the default over it within noise of the shipped one
on dev, a little below it on the held-out queries, ~3 ms slower (seventeenth session).

``--per-token``: every activation is quantised with one scale per token (per row of the
matrix product's input) instead of one per call. ``DynamicQuantizeLinear`` takes one scale for its
whole input, so the widest token of any pair in a call sets every token's rounding and a pair's
score moves with the pairs scored beside it (the shipped cross-encoder's FFN inputs in its first
four layers span 6-8 times a typical token's range). Per token, each row ``x`` becomes
``round(x * 127 / max|x|) + 128`` (uint8, symmetric, zero point 128: within the 7-bit weights'
AVX2 bound) and each product's rows are multiplied by their own scale afterwards; the scales'
product keeps a computed 1 for the activation, so that ONNX Runtime still fuses ``MatMulInteger``,
``Cast`` and the weight's scale into ``MatMulIntegerToFloat`` (a constant 1 would be folded away;
a per-row scale left inside the fused kernel is read per *column*). On the shipped cross-encoder
(twenty-first session, ``training/REPORT.md``): a pair's score independent of the batch, half the
order differences from float activations, rankings level on the held-out queries and a little
up on dev, but ~15% more time per pair on an AVX2 CPU (six elementwise operations per input
instead of one fused one): not shipped.

    python -m reranker.training.requantize SRC.onnx DST.onnx [--float-prefix PREFIX ...]
        [--per-token]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reranker.errors import RerankerError

#: the largest weight magnitude whose products cannot overflow the AVX2 kernel's 16-bit sums
#: (ONNX Runtime's ``reduce_range`` range; the late student's own folded key matrix uses 63,
#: :data:`reranker.training.latejoint.WEIGHT_MAX`)
SEVEN_BIT = 64


def integer_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The stored right-hand matrices of a graph's ``MatMulInteger`` nodes, by name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    return {
        n.input[1]: numpy_helper.to_array(inits[n.input[1]])
        for n in model.graph.node
        if n.op_type == "MatMulInteger" and n.input[1] in inits
    }


def requantize(
    src: str | Path,
    dst: str | Path,
    float_prefix: str | Sequence[str] | None = None,
    per_token: bool = False,
) -> dict[str, int]:
    """Write ``src`` with every 8-bit ``MatMulInteger`` weight in 7 bits to ``dst``; returns
    counts (``weights`` rewritten, ``already`` in range, ``float`` nodes made float32 arithmetic
    on their int8 weights: those whose names start with ``float_prefix``, one prefix or
    several; ``per_token`` activations given one scale per token, when asked)."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(src))
    except Exception as exc:  # a protobuf DecodeError, an OSError
        raise RerankerError(f"{src} is not an ONNX model ({type(exc).__name__})") from None
    counts = {"weights": 0, "already": 0, "float": 0, "per_token": 0}
    if float_prefix:
        prefixes = (float_prefix,) if isinstance(float_prefix, str) else tuple(float_prefix)
        counts["float"] = _float_arithmetic(model, prefixes, src)
    if per_token:
        counts["per_token"] = _per_token_activations(model, src)
    inits = {i.name: i for i in model.graph.initializer}
    done: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or node.input[1] not in inits:
            continue
        name = node.input[1]
        if name in done:
            continue
        done.add(name)
        w = numpy_helper.to_array(inits[name])
        if w.dtype != np.int8:
            raise RerankerError(f"{src}: weight {name} is {w.dtype}, not int8")
        zero = inits.get(node.input[3]) if len(node.input) > 3 else None
        if zero is not None and np.any(numpy_helper.to_array(zero)):
            raise RerankerError(f"{src}: weight {name} is not symmetric (nonzero zero point)")
        if not name.endswith("_quantized") or name[: -len("_quantized")] + "_scale" not in inits:
            raise RerankerError(f"{src}: no scale initializer for weight {name}")
        scale_name = name[: -len("_quantized")] + "_scale"
        scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32)
        per_channel = scale.ndim == 1 and scale.size == w.shape[1]
        peak = np.abs(w.astype(np.int32)).max(axis=0 if per_channel else None)
        if np.all(peak <= SEVEN_BIT):
            counts["already"] += 1
            continue
        peak = np.maximum(peak, 1).astype(np.float32)
        w7 = np.clip(np.round(w.astype(np.float32) * SEVEN_BIT / peak), -SEVEN_BIT, SEVEN_BIT)
        inits[name].CopyFrom(numpy_helper.from_array(w7.astype(np.int8), name))
        new_scale = (scale * peak / SEVEN_BIT).astype(np.float32).reshape(scale.shape)
        inits[scale_name].CopyFrom(numpy_helper.from_array(new_scale, scale_name))
        counts["weights"] += 1
    _check_scales_read_only_by_mul(model, done)
    try:
        onnx.save(model, str(dst))
    except OSError as exc:
        raise RerankerError(f"cannot write {dst}: {exc.strerror or exc}") from None
    return counts


def _float_arithmetic(model, prefixes: tuple[str, ...], src: str | Path) -> int:
    """Rewrite the dynamic-int8 pattern of the ``MatMulInteger`` nodes named ``prefix...`` (any
    of ``prefixes``)
    (``DynamicQuantizeLinear`` of the input, ``MatMulInteger``, ``Cast``, ``Mul`` by the two
    scales) into ``MatMul(input, DequantizeLinear(weight, scale))``; returns how many."""
    from onnx import helper

    g = model.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    replace: dict[int, list] = {}  # id of the pattern's last node -> its new nodes
    drop: set[int] = set()
    for n in g.node:
        if n.op_type != "MatMulInteger" or not n.name.startswith(prefixes):
            continue
        weight = n.input[1]
        quant = producer.get(n.input[0])
        cast = readers.get(n.output[0], [])
        mul = readers.get(cast[0].output[0], []) if len(cast) == 1 else []
        scale = weight[: -len("_quantized")] + "_scale"
        if (
            weight not in inits
            or quant is None
            or quant.op_type != "DynamicQuantizeLinear"
            or len(cast) != 1
            or cast[0].op_type != "Cast"
            or len(mul) != 1
            or mul[0].op_type != "Mul"
            or not weight.endswith("_quantized")
            or scale not in inits
        ):
            raise RerankerError(f"{src}: {n.name} is not a dynamically quantised MatMul")
        dequantized = f"{n.name}_weight"
        replace[id(mul[0])] = [
            helper.make_node(
                "DequantizeLinear", [weight, scale], [dequantized], axis=1, name=f"{n.name}_dq"
            ),
            helper.make_node(
                "MatMul", [quant.input[0], dequantized], [mul[0].output[0]], name=f"{n.name}_f"
            ),
        ]
        drop |= {id(n), id(cast[0])}
    nodes = []
    for n in g.node:
        if id(n) in replace:
            nodes.extend(replace[id(n)])
        elif id(n) not in drop:
            nodes.append(n)
    # what only the rewritten nodes read (their input's quantisation, the scales' product)
    outputs = {o.name for o in g.output}
    while True:
        read = {i for n in nodes for i in n.input} | outputs
        live = [n for n in nodes if any(o in read for o in n.output if o)]
        if len(live) == len(nodes):
            break
        nodes = live
    del g.node[:]
    g.node.extend(nodes)
    read = {i for n in nodes for i in n.input}
    kept = [i for i in g.initializer if i.name in read]
    del g.initializer[:]
    g.initializer.extend(kept)
    return len(replace)


def _per_token_activations(model, src: str | Path) -> int:
    """Rewrite every ``DynamicQuantizeLinear`` (one scale per call) into quantisation with one
    scale per row of its input, and each integer product it feeds into the same product whose
    rows are then multiplied by their scale; returns how many inputs were rewritten."""
    from onnx import helper, numpy_helper

    g = model.graph
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    quants = [n for n in g.node if n.op_type == "DynamicQuantizeLinear"]
    if not quants:
        return 0
    # Check the whole pattern before changing anything: each quantised input feeds only
    # MatMulInteger (value and zero point), its scale only the scales' product, which feeds only
    # the product's final Mul.
    finals: dict[int, list] = {}  # id of the quantisation -> (scales' product, final Mul)
    for n in quants:
        q, scale, zero = n.output
        if any(r.op_type != "MatMulInteger" for r in readers.get(q, []) + readers.get(zero, [])):
            raise RerankerError(f"{src}: {n.name}'s output is read by more than integer products")
        pairs = [(m, readers.get(m.output[0], [])) for m in readers.get(scale, [])]
        if not pairs or any(
            m.op_type != "Mul" or len(f) != 1 or f[0].op_type != "Mul" for m, f in pairs
        ):
            raise RerankerError(f"{src}: {n.name}'s scale is not read as dynamic int8 reads it")
        finals[id(n)] = [(m, f[0]) for m, f in pairs]
    const = {
        "per_token_127": np.float32(127.0),
        "per_token_floor": np.float32(1e-12),  # a row of zeros keeps a finite scale
        "per_token_unit": np.float32(1.0),
        "per_token_zero": np.uint8(128),
    }
    g.initializer.extend(numpy_helper.from_array(np.array(v), k) for k, v in const.items())
    one = "per_token_one"  # 1.0, computed: a constant would be folded into the weight's scale
    before: dict[int, list] = {}
    after_node: dict[int, list] = {}
    for k, n in enumerate(quants):
        x = n.input[0]
        q, scale, zero = n.output
        p = f"per_token_{k}"  # unique even where nodes are unnamed
        nodes = [
            helper.make_node("Abs", [x], [f"{p}_abs"], name=f"{p}_abs"),
            helper.make_node(
                "ReduceMax", [f"{p}_abs"], [f"{p}_max"], axes=[-1], keepdims=1, name=f"{p}_max"
            ),
            helper.make_node(
                "Max", [f"{p}_max", "per_token_floor"], [f"{p}_peak"], name=f"{p}_peak"
            ),
            helper.make_node("Div", [f"{p}_peak", "per_token_127"], [scale], name=f"{p}_scale"),
            helper.make_node("Div", [x, scale], [f"{p}_scaled"], name=f"{p}_scaled"),
            helper.make_node(
                "QuantizeLinear",
                [f"{p}_scaled", "per_token_unit", "per_token_zero"],
                [q],
                name=f"{p}_quantize",
            ),
            helper.make_node("Identity", ["per_token_zero"], [zero], name=f"{p}_zero"),
        ]
        if k == 0:
            nodes += [
                helper.make_node(
                    "ReduceMax", [f"{p}_peak"], [f"{p}_top"], keepdims=0, name=f"{p}_top"
                ),
                helper.make_node("Div", [f"{p}_top", f"{p}_top"], [one], name="per_token_one"),
            ]
        before[id(n)] = nodes
        for scale_mul, final in finals[id(n)]:
            scale_mul.input[list(scale_mul.input).index(scale)] = one
            out = final.output[0]
            final.output[0] = f"{out}_per_token_rows"
            after_node[id(final)] = [
                helper.make_node("Mul", [final.output[0], scale], [out], name=f"{p}_rows_{out}")
            ]
    nodes = []
    for n in g.node:
        nodes += before.get(id(n), [n])
        nodes += after_node.get(id(n), [])
    del g.node[:]
    g.node.extend(nodes)
    return len(quants)


def _check_scales_read_only_by_mul(model, weights: set[str]) -> None:
    """The rewritten scales must be read only where the dynamic-quantisation pattern reads them
    (a ``Mul`` with the activation's scale); anything else would now see a changed value."""
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node.op_type)
    for name in weights:
        scale = name[: -len("_quantized")] + "_scale"
        if any(op != "Mul" for op in readers.get(scale, [])):
            raise RerankerError(f"scale {scale} is read by {readers[scale]}, not only by Mul")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument(
        "--per-token",
        action="store_true",
        help="quantise every activation with one scale per token instead of one per call",
    )
    ap.add_argument(
        "--float-prefix",
        metavar="PREFIX",
        action="append",
        help="compute the MatMuls named PREFIX... in float32 on their int8-stored weights "
        "(repeat for several prefixes)",
    )
    args = ap.parse_args(argv)
    if not args.src.is_file():
        print(f"requantize: {args.src} is not a file", file=sys.stderr)
        return 1
    try:
        counts = requantize(args.src, args.dst, args.float_prefix, args.per_token)
    except RerankerError as exc:
        print(f"requantize: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.dst}: {counts['weights']} weights requantised to 7 bits, "
        f"{counts['already']} already within ±{SEVEN_BIT}"
        + (f", {counts['float']} computed in float32" if args.float_prefix else "")
        + (f", {counts['per_token']} inputs quantised per token" if args.per_token else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
