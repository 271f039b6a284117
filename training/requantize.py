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

    python -m reranker.training.requantize SRC.onnx DST.onnx
"""

from __future__ import annotations

import argparse
import sys
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


def requantize(src: str | Path, dst: str | Path) -> dict[str, int]:
    """Write ``src`` with every 8-bit ``MatMulInteger`` weight in 7 bits to ``dst``; returns
    counts (``weights`` rewritten, ``already`` in range)."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(src))
    except Exception as exc:  # a protobuf DecodeError, an OSError
        raise RerankerError(f"{src} is not an ONNX model ({type(exc).__name__})") from None
    inits = {i.name: i for i in model.graph.initializer}
    done: set[str] = set()
    counts = {"weights": 0, "already": 0}
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
    args = ap.parse_args(argv)
    if not args.src.is_file():
        print(f"requantize: {args.src} is not a file", file=sys.stderr)
        return 1
    try:
        counts = requantize(args.src, args.dst)
    except RerankerError as exc:
        print(f"requantize: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.dst}: {counts['weights']} weights requantised to 7 bits, "
        f"{counts['already']} already within ±{SEVEN_BIT}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
