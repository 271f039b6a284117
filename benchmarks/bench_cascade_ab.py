"""Two rerankers timed alternately on the same candidates of an existing index (A/B), so that a
change of machine speed between runs cannot decide the comparison.

    python benchmarks/bench_cascade_ab.py --index-dir INDEX --queries dev.parquet \\
        --model A=DIR_A --model B=DIR_B [--n-queries 150] [--rounds 3]

For each round and each model: rerank latency of the top 100 of every query (the index's stored
product forms, as the search path uses them) and the whole search (retrieve + rerank).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow.parquet as pq

from reranker import BM25Index, SearchPipeline, open_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index-dir", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--n-queries", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-k", type=int, default=100)
    args = ap.parse_args()

    index = BM25Index.load(args.index_dir)
    queries = sorted(set(pq.read_table(args.queries, columns=["query"]).column(0).to_pylist()))
    queries = queries[:: max(1, len(queries) // args.n_queries)]
    cands = {q: index.retrieve(q, args.k) for q in queries}
    models = {}
    for spec in args.model:
        name, path = spec.split("=", 1)
        model = open_model(path)
        tokens = index.tokens_for(model.token_key)
        if tokens is None:
            raise SystemExit(f"{args.index_dir} stores no product forms for {path}")
        models[name] = (model, tokens, SearchPipeline(index, model, k=args.k))
    results: dict[str, dict[str, list[float]]] = {n: {"rerank": [], "search": []} for n in models}
    for _ in range(args.rounds):
        for name, (model, tokens, pipeline) in models.items():
            for q in queries[:10]:  # warm-up
                pipeline.search(q)
            for q in queries:
                ids = tokens.rows([c.row for c in cands[q]])
                t = time.perf_counter()
                model.score_products(q, [c.product for c in cands[q]], ids)
                results[name]["rerank"].append(time.perf_counter() - t)
                t = time.perf_counter()
                pipeline.search(q)
                results[name]["search"].append(time.perf_counter() - t)
    print(f"{len(queries)} queries x {args.rounds} rounds, k={args.k}, alternating by round")
    print("| model | rerank p50 / p99 | whole search p50 / p99 |\n|---|---|---|")
    for name, r in results.items():
        a, b = (np.asarray(r[x]) * 1e3 for x in ("rerank", "search"))
        print(
            f"| {name} | {np.percentile(a, 50):.1f} / {np.percentile(a, 99):.1f} ms | "
            f"{np.percentile(b, 50):.1f} / {np.percentile(b, 99):.1f} ms |"
        )


if __name__ == "__main__":
    main()
