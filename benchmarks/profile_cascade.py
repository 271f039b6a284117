"""Where a cascade's query time goes: its first stage, its second, and the second's padding;
with the second stage's ONNX Runtime threads spinning or not, in one batch or in two.

    python benchmarks/profile_cascade.py --index-dir INDEX \\
        --queries ../shared/data/homedepot/dev.parquet [--model reranker/models/default] \\
        [--n-queries 100] [--rounds 2]

On the top k of dev queries from an existing index (the stored product forms of the cascade's
first stage, as the search path uses them), four copies of the cascade timed alternately by
round on the same candidates: as shipped (spinning off in both stages, one batch), the second
stage with spinning on, with batches of 10 pairs, and both. Then the second stage's input: its
pairs' tokens per query, and those tokens padded to the longest pair of the batch.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import index_args, index_candidates

from reranker.cascade import CascadeReranker
from reranker.models import open_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    index_args(ap, n_queries=100, rounds=2)
    ap.add_argument("--model", default="reranker/models/default", help="a cascade directory")
    args = ap.parse_args()

    index, queries, cands = index_candidates(args)
    shipped = CascadeReranker(args.model)
    second_dir = shipped.second.model_dir
    spin = CascadeReranker(args.model)
    spin.second = open_model(second_dir)  # ONNX Runtime's default: threads spin
    halves = CascadeReranker(args.model)
    halves.second.batch_size = 10
    both = CascadeReranker(args.model)
    both.second = open_model(second_dir, batch_size=10)
    variants = {
        "shipped (no spinning, one batch)": shipped,
        "second stage spinning": spin,
        "batches of 10": halves,
        "spinning + batches of 10": both,
    }
    tokens = index.tokens_for(shipped.token_key)
    if tokens is None:
        raise SystemExit(f"{args.index_dir} stores no product forms for {args.model}")
    times = {n: {"total": [], "first": [], "second": []} for n in variants}
    for _ in range(args.rounds):
        for name, model in variants.items():
            for q in queries[:10]:  # warm-up
                model.score_products(
                    q, [c.product for c in cands[q]], tokens.rows([c.row for c in cands[q]])
                )
            for q in queries:
                ids = tokens.rows([c.row for c in cands[q]])
                t = time.perf_counter()
                model.score_products(q, [c.product for c in cands[q]], ids)
                times[name]["total"].append((time.perf_counter() - t) * 1e3)
                times[name]["first"].append(model.last_timings["first_ms"])
                times[name]["second"].append(model.last_timings["second_ms"])
    print(f"{len(queries)} queries x {args.rounds} rounds, k={args.k}, second_k={shipped.second_k}")
    print("| variant | total p50 / p99 | first stage p50 | second stage p50 |\n|---|---|---|---|")
    for name, t in times.items():
        total, first, second = (np.asarray(t[x]) for x in ("total", "first", "second"))
        print(
            f"| {name} | {np.percentile(total, 50):.1f} / {np.percentile(total, 99):.1f} ms | "
            f"{np.percentile(first, 50):.1f} ms | {np.percentile(second, 50):.1f} ms |"
        )
    real, padded = [], []
    for q in queries:
        products = [c.product for c in cands[q]]
        first = shipped.first.score_products(q, products, tokens.rows([c.row for c in cands[q]]))
        head = np.argsort(-first.raw, kind="stable")[: shipped.second_k]
        texts = [products[i].text(shipped.config.fields) for i in head]
        qids = shipped.second.query_ids(q)
        lengths = shipped.second.pairs.pair_lengths(
            [qids] * len(texts), shipped.second.product_inputs(texts)
        )
        real.append(int(lengths.sum()))
        padded.append(int(len(lengths) * lengths.max()))
    print(
        f"second stage input per query: {np.mean(real):.0f} tokens, {np.mean(padded):.0f} padded "
        f"in one batch ({np.sum(padded) / np.sum(real):.2f}x)"
    )


if __name__ == "__main__":
    main()
