"""A model's whole search under latency budgets (``SearchPipeline.search(budget_ms=...)``, what
``reranker search --budget-ms`` does): rerank and total latency and how many candidates a
cascade's second stage rescored, per budget.

    python benchmarks/bench_budget.py --index-dir INDEX --queries dev.parquet \\
        [--model DIR] [--budget 47 --budget 40] [--n-queries 150] [--rounds 2]

The first row is always the model without a budget. Rounds alternate over the budgets, so a
change of machine speed during the run reaches every row alike. The budget is the whole
search's (retrieval included), as the CLI and the API take it.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
from _common import index_args, index_candidates

from reranker import SearchPipeline, open_model
from reranker.pipeline import load_default_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    index_args(ap, n_queries=150, rounds=2)
    ap.add_argument("--model", help="model directory (default: the installed default)")
    ap.add_argument("--budget", type=float, action="append", default=[], help="ms; repeatable")
    args = ap.parse_args()

    index, queries, _ = index_candidates(args)
    model = open_model(args.model) if args.model else load_default_model()
    pipeline = SearchPipeline(index, model, k=args.k)
    budgets: list[float | None] = [None, *args.budget]
    rows = {b: {"rerank": [], "total": [], "rescored": Counter()} for b in budgets}
    for q in queries[:20]:  # warm-up
        pipeline.search(q)
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        for b in budgets:
            for q in queries:
                r = pipeline.search(q, budget_ms=b)
                rows[b]["rerank"].append(r.timings.rerank_ms)
                rows[b]["total"].append(r.timings.total_ms)
                rows[b]["rescored"][r.rescored_k] += 1
    print(
        f"{len(queries)} queries x {args.rounds} rounds, k={args.k}, model {model.name}, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print("| budget (whole search) | rerank p50 / p99 | search p50 / p99 | rescored: queries |")
    print("|---|---|---|---|")
    for b, row in rows.items():
        rer, tot = np.array(row["rerank"]), np.array(row["total"])
        counts = ", ".join(
            f"{'—' if k is None else k}: {n}" for k, n in sorted(row["rescored"].items(), key=str)
        )
        print(
            f"| {'none' if b is None else f'{b:g} ms'} "
            f"| {np.percentile(rer, 50):.1f} / {np.percentile(rer, 99):.1f} ms "
            f"| {np.percentile(tot, 50):.1f} / {np.percentile(tot, 99):.1f} ms | {counts} |"
        )


if __name__ == "__main__":
    main()
