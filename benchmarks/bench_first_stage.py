"""First-stage latency of embedded and OpenSearch indexes, alternating by round: retrieval of
the top k for each query (BM25, fused with dense vectors when the index has them), with or
without spelling correction of unknown query words (OpenSearch: fuzzy matching).

    python benchmarks/bench_first_stage.py --queries ../shared/data/homedepot/dev.parquet \\
        --index before=OLD_INDEX:exact --index now=NEW_INDEX \\
        --index opensearch=opensearch:ALIAS

``NAME=DIR`` searches as the index does by default; ``NAME=DIR:exact`` with
``correct_spelling`` off. The spelling table is made before timing (as ``reranker serve`` does).
``NAME=opensearch:ALIAS`` is an OpenSearch index at ``--url`` (its hybrid or BM25 retrieval, as
``reranker index --backend opensearch`` built it); ``opensearch:ALIAS:exact`` without fuzziness.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pyarrow.parquet as pq

from reranker.index import BM25Index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", required=True)
    ap.add_argument("--index", action="append", required=True, metavar="NAME=DIR[:exact]")
    ap.add_argument("--n-queries", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-k", type=int, default=100)
    ap.add_argument("--url", default="http://127.0.0.1:9200", help="OpenSearch, for opensearch:")
    args = ap.parse_args()

    queries = sorted(set(pq.read_table(args.queries, columns=["query"])["query"].to_pylist()))
    rng = np.random.default_rng(0)
    queries = rng.permutation(queries)[: args.n_queries].tolist()
    indexes = {}
    for spec in args.index:
        name, _, where = spec.partition("=")
        if where.startswith("opensearch:"):
            from reranker.index.opensearch import ConnectionOptions, OpenSearchRetriever

            alias, _, mode = where.removeprefix("opensearch:").partition(":")
            index = OpenSearchRetriever(ConnectionOptions(args.url), alias, fuzzy=mode != "exact")
        else:
            path, _, mode = where.partition(":")
            index = BM25Index.load(path)
            index.correct_spelling = mode != "exact"
            index.prepare()
        for q in queries[:20]:  # warm the embedder session and the caches
            index.retrieve(q, args.k)
        indexes[name] = index
    times: dict[str, list[float]] = {n: [] for n in indexes}
    for r in range(args.rounds):
        for name in list(indexes)[:: 1 if r % 2 == 0 else -1]:
            index = indexes[name]
            for q in queries:
                t = time.perf_counter()
                index.retrieve(q, args.k)
                times[name].append((time.perf_counter() - t) * 1000)
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    flags = open("/proc/cpuinfo").read()
    kind = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2, no VNNI"
    print(f"{len(queries)} queries x {args.rounds} rounds, k={args.k}")
    print(f"{cpu}, {os.cpu_count()} cores ({kind})")
    print("| index | first stage p50 / p99 |")
    print("|---|---|")
    for name, t in times.items():
        print(f"| {name} | {np.percentile(t, 50):.2f} / {np.percentile(t, 99):.2f} ms |")


if __name__ == "__main__":
    main()
