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

    python -m reranker.training.requantize SRC.onnx DST.onnx [--float-prefix PREFIX ...]
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
    src: str | Path, dst: str | Path, float_prefix: str | Sequence[str] | None = None
) -> dict[str, int]:
    """Write ``src`` with every 8-bit ``MatMulInteger`` weight in 7 bits to ``dst``; returns
    counts (``weights`` rewritten, ``already`` in range, ``float`` nodes made float32 arithmetic
    on their int8 weights: those whose names start with ``float_prefix``, one prefix or
    several)."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(src))
    except Exception as exc:  # a protobuf DecodeError, an OSError
        raise RerankerError(f"{src} is not an ONNX model ({type(exc).__name__})") from None
    counts = {"weights": 0, "already": 0, "float": 0}
    if float_prefix:
        prefixes = (float_prefix,) if isinstance(float_prefix, str) else tuple(float_prefix)
        counts["float"] = _float_arithmetic(model, prefixes, src)
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
        counts = requantize(args.src, args.dst, args.float_prefix)
    except RerankerError as exc:
        print(f"requantize: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.dst}: {counts['weights']} weights requantised to 7 bits, "
        f"{counts['already']} already within ±{SEVEN_BIT}"
        + (f", {counts['float']} computed in float32" if args.float_prefix else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
