"""Are two exported graphs the same model? Compares their stored weights (ONNX initializers)
name by name, value by value.

A student retrained with the recipe, data, seed and thread count of a shipped one comes out bit
for bit the same on the same kind of CPU; exporting it again then gives the shipped graphs back,
with the fp32 graphs the package does not ship (``scripts/reproduce_shipped.sh``)::

    python -m reranker.training.sameweights reranker/models/cross/model.int8.onnx RERUN/x.onnx
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def compare(a: str | Path, b: str | Path) -> dict:
    """Initializers of ONNX files ``a`` and ``b`` → counts of the names in one only, of those
    bit-identical and of those that differ (with the largest difference and where)."""
    import onnx
    from onnx import numpy_helper

    wa, wb = (
        {i.name: numpy_helper.to_array(i) for i in onnx.load(str(p)).graph.initializer}
        for p in (a, b)
    )
    identical, different = 0, []
    for name in sorted(set(wa) & set(wb)):
        x, y = wa[name], wb[name]
        if x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y):
            identical += 1
            continue
        gap = (
            float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
            if x.shape == y.shape
            else float("inf")
        )
        different.append((gap, name))
    different.sort(reverse=True)
    return {
        "only_first": sorted(set(wa) - set(wb)),
        "only_second": sorted(set(wb) - set(wa)),
        "identical": identical,
        "different": len(different),
        "largest_differences": [{"name": n, "max_abs_diff": g} for g, n in different[:5]],
        "same": not different and set(wa) == set(wb),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m reranker.training.sameweights A.onnx B.onnx", file=sys.stderr)
        return 2
    for path in args:
        if not Path(path).is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    from google.protobuf.message import DecodeError

    try:
        result = compare(*args)
    except DecodeError as e:  # what onnx.load raises on a file that is not a graph
        print(f"error: not two ONNX graphs: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0 if result["same"] else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
