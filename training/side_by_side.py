"""What a shopper sees: BM25's top results beside the reranker's, as a Markdown table.

    python -m reranker.training.side_by_side --index-dir INDEX --queries dev.parquet \\
        [--baseline-index-dir BM25_INDEX] [--model DIR] [--draw 20] [--seed 13] \\
        [--extra "cordless drill" ...] [-n 5]

For the ``--extra`` queries (the demo's) and ``--draw`` queries drawn with ``--seed`` from the
distinct queries of ``--queries``, the top ``n`` of BM25 (``--baseline-index-dir``, default the
same index) and of the model's reranking of the top 100 of ``--index-dir``'s first stage (hybrid
when it stores dense vectors), titles only, so that a reader can count the results that are
plainly wrong for the query (wrong product type, an attribute the query asked for contradicted).
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow.parquet as pq

from reranker import BM25Index, SearchPipeline
from reranker.pipeline import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index-dir", required=True)
    ap.add_argument("--baseline-index-dir", help="Index of the left column (default: --index-dir).")
    ap.add_argument("--queries", required=True)
    ap.add_argument("--model")
    ap.add_argument("--draw", type=int, default=20)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--extra", action="append", default=[])
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()

    index = BM25Index.load(args.index_dir)
    baseline = BM25Index.load(args.baseline_index_dir) if args.baseline_index_dir else index
    pipeline = SearchPipeline(index, load_model(args.model), k=100, n=args.n)
    pool = sorted(set(pq.read_table(args.queries).column("query").to_pylist()))
    drawn = list(np.random.default_rng(args.seed).choice(pool, args.draw, replace=False))
    first = "hybrid (BM25 + dense)" if index.dense is not None else "BM25"
    print(f"model: {pipeline.reranker.name}; {first} top 100 reranked; top {args.n} shown\n")
    for q in [*args.extra, *drawn]:
        bm25 = [c.product.title for c in baseline.retrieve(q, args.n)]
        reranked = [r.title for r in pipeline.search(q).results]
        print(f"**{q}**\n\n| # | BM25 | reranked |\n|---|---|---|")
        for i in range(args.n):
            a = bm25[i] if i < len(bm25) else ""
            b = reranked[i] if i < len(reranked) else ""
            print(f"| {i + 1} | {a} | {b} |")
        print()


if __name__ == "__main__":
    main()
