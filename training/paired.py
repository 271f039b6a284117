"""Two systems compared query by query: the mean difference of each metric and its 95% bootstrap
interval over queries, from the files ``reranker eval --per-query`` writes.

    reranker eval --judged J --index-dir I --model A --e2e --per-query a.parquet
    reranker eval --judged J --index-dir I --model B --e2e --per-query b.parquet
    python -m reranker.training.paired a.parquet b.parquet [--json OUT]

Each metric is compared on the queries both files measured (a query without a pair to order has
no pair accuracy; a file written without ``--e2e`` has no end to end). The two files must cover
the same queries: files of different judged sets are refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from reranker.errors import DataError
from reranker.training.blend import bootstrap
from reranker.training.evaluate import PER_QUERY_COLUMNS


def read_per_query(path) -> dict[str, dict[str, float | None]]:
    try:
        t = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    missing = [c for c in ("query", *PER_QUERY_COLUMNS) if c not in t.column_names]
    if missing:
        raise DataError(f"{path} is not a `reranker eval --per-query` file (no {missing})")
    cols = {c: t.column(c).to_pylist() for c in ("query", *PER_QUERY_COLUMNS)}
    return {q: {c: cols[c][i] for c in PER_QUERY_COLUMNS} for i, q in enumerate(cols["query"])}


def compare(new: dict, old: dict) -> dict[str, dict]:
    """Per metric: :func:`bootstrap` of ``new - old`` over the queries both measured, and the
    two means there."""
    if set(new) != set(old):
        only = sorted(set(new) ^ set(old))
        raise DataError(
            f"the files evaluate different queries ({len(only)} in one only, e.g. {only[:2]})"
        )
    out = {}
    for metric in PER_QUERY_COLUMNS:
        both = [q for q in sorted(new) if new[q][metric] is not None and old[q][metric] is not None]
        if not both:
            continue
        diff = [new[q][metric] - old[q][metric] for q in both]
        out[metric] = {
            **bootstrap(diff),
            "new": sum(new[q][metric] for q in both) / len(both),
            "old": sum(old[q][metric] for q in both) / len(both),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("new", type=Path, help="per-query file of the system compared")
    ap.add_argument("old", type=Path, help="per-query file of the reference system")
    ap.add_argument("--json", type=Path, help="also write the comparison here")
    args = ap.parse_args(argv)
    try:
        result = compare(read_per_query(args.new), read_per_query(args.old))
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"{args.new} against {args.old}")
    for metric, r in result.items():
        lo, hi = r["ci95"]
        print(
            f"{metric:<14} {r['old']:.4f} -> {r['new']:.4f}  {r['mean']:+.4f} "
            f"[{lo:+.4f}, {hi:+.4f}] over {r['queries']} queries "
            f"(better {r['better']:.0%}, worse {r['worse']:.0%})"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"new": str(args.new), "old": str(args.old), **result}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
