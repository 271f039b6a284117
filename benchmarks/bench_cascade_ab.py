"""Two rerankers timed alternately on the same candidates of an existing index (A/B), so that a
change of machine speed between runs cannot decide the comparison.

    python benchmarks/bench_cascade_ab.py --index-dir INDEX --queries dev.parquet \\
        --model A=DIR_A --model B=DIR_B [--n-queries 150] [--rounds 3]

``--model NAME=DIR@OTHER_INDEX`` reads that model's stored product forms (and runs its search)
from another index of the same catalog, e.g. one built for a model that reads other fields.

For each round and each model: rerank latency of the top 100 of every query (the index's stored
product forms, as the search path uses them; text for a plain cross-encoder the index holds none
for) and the whole search (retrieve + rerank).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import index_args, index_candidates

from reranker import BM25Index, SearchPipeline, open_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    index_args(ap, n_queries=150, rounds=3)
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR[@INDEX_DIR]")
    args = ap.parse_args()

    index, queries, cands = index_candidates(args)
    models = {}
    for spec in args.model:
        name, path = spec.split("=", 1)
        path, _, other = path.partition("@")
        own = BM25Index.load(other) if other else index
        if own.ids != index.ids:
            raise SystemExit(f"{other} does not index the catalog of {args.index_dir}")
        model = open_model(path)
        tokens = own.tokens_for(model.token_key)
        if tokens is None and hasattr(model, "attach_store"):  # a late student needs its states
            raise SystemExit(f"{other or args.index_dir} stores no product states for {path}")
        models[name] = (model, tokens, SearchPipeline(own, model, k=args.k))
    results: dict[str, dict[str, list[float]]] = {n: {"rerank": [], "search": []} for n in models}
    for _ in range(args.rounds):
        for name, (model, tokens, pipeline) in models.items():
            for q in queries[:10]:  # warm-up
                pipeline.search(q)
            for q in queries:
                # a plain cross-encoder without stored token ids tokenises the text, as served
                ids = None if tokens is None else tokens.rows([c.row for c in cands[q]])
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
