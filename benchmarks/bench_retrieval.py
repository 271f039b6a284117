"""First-stage benchmark: embedded rank-bm25 index vs OpenSearch, at the demo catalog's size and
replicated to about a million products; plus top-100 parity between the two.

    scripts/opensearch.sh start
    python benchmarks/bench_retrieval.py --queries ../shared/data/homedepot/dev.parquet \\
        --copies 1 19

A catalog of ``copies`` × 54,667 products is the demo catalog replicated with deterministic
variations: copy j > 0 of a product gets the id ``ID-j``, loses one title word (the (j mod n)-th
of its n words, when it has more than three) and takes the color of another product, so copies
are similar but not identical, as product variants are.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reranker.index import BM25Index, store
from reranker.index.build import index_catalog, index_catalog_opensearch
from reranker.index.opensearch import ConnectionOptions, OpenSearchRetriever


def replicate(catalog: str, copies: int, out: Path) -> Path:
    base = pq.read_table(catalog).to_pydict()
    n = len(base["product_id"])
    colors = [c for c in base["color"] if c]
    cols: dict[str, list] = {k: [] for k in base}
    for j in range(copies):
        for i in range(n):
            title = base["title"][i]
            if j:
                words = title.split()
                if len(words) > 3:
                    del words[j % len(words)]
                title = " ".join(words)
            cols["product_id"].append(f"{base['product_id'][i]}" + (f"-{j}" if j else ""))
            cols["title"].append(title)
            cols["brand"].append(base["brand"][i])
            cols["material"].append(base["material"][i])
            cols["color"].append(colors[(i * 31 + j * 7) % len(colors)] if j else base["color"][i])
    pq.write_table(pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()}), out)
    return out


def latency(fn, queries, warmup=20) -> dict:
    for q in queries[:warmup]:
        fn(q)
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", default="demo/products.parquet")
    ap.add_argument("--queries", required=True)
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 19])
    ap.add_argument("-k", type=int, default=100)
    ap.add_argument("--url", default="http://127.0.0.1:9200")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    queries = sorted(set(pq.read_table(args.queries, columns=["query"]).column(0).to_pylist()))
    options = ConnectionOptions(args.url, timeout=120, retries=2)
    results = {"machine": f"{platform.machine()}, {platform.python_version()}", "runs": []}
    work = Path(tempfile.mkdtemp(prefix="kd-bench-retrieval-"))
    try:
        for copies in args.copies:
            path = (
                args.catalog
                if copies == 1
                else replicate(args.catalog, copies, work / "cat.parquet")
            )
            run: dict = {"copies": copies}
            emb = index_catalog(path, work / f"idx{copies}")
            gen, _ = store.open_current(work / f"idx{copies}")
            index = BM25Index.load(work / f"idx{copies}")
            run["products"] = len(index)
            run["embedded"] = {
                "build_s": emb.seconds,
                "docs_per_s": emb.indexed / emb.seconds,
                "size_mb": sum(p.stat().st_size for p in gen.iterdir()) / 1e6,
                **latency(lambda q, ix=index: ix.retrieve(q, args.k), queries),
            }
            name = f"bench-{copies}"
            os_report = index_catalog_opensearch(path, options, name, overwrite=True)
            retriever = OpenSearchRetriever(options, name)
            stats = options.client().indices.stats(index=name)["_all"]["primaries"]
            run["opensearch"] = {
                "build_s": os_report.seconds,
                "docs_per_s": os_report.indexed / os_report.seconds,
                "failed": len(os_report.failed),
                "size_mb": stats["store"]["size_in_bytes"] / 1e6,
                **latency(lambda q, r=retriever: r.retrieve(q, args.k), queries),
            }
            overlaps, top1 = [], []
            for q in queries:
                a = [c.product.id for c in index.retrieve(q, args.k)]
                b = [c.product.id for c in retriever.retrieve(q, args.k)]
                if a or b:
                    overlaps.append(len(set(a) & set(b)) / max(len(a), len(b)))
                    top1.append(bool(a and b and a[0] == b[0]))
            run["parity"] = {
                "mean_top_k_overlap": float(np.mean(overlaps)),
                "median_top_k_overlap": float(np.median(overlaps)),
                "same_top1": float(np.mean(top1)),
            }
            options.client().indices.delete(index=f"{name}-*", ignore_unavailable=True)
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
            shutil.rmtree(work / f"idx{copies}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{len(queries)} dev queries, k={args.k}\n")
    print("| products | backend | index build | docs/s | size | query p50 | query p99 |")
    print("|---|---|---|---|---|---|---|")
    for run in results["runs"]:
        for b in ("embedded", "opensearch"):
            r = run[b]
            print(
                f"| {run['products']:,} | {b} | {r['build_s']:.1f} s | {r['docs_per_s']:,.0f} | "
                f"{r['size_mb']:.0f} MB | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms |"
            )
    for run in results["runs"]:
        p = run["parity"]
        print(
            f"\nparity at {run['products']:,}: top-{args.k} overlap "
            f"mean {p['mean_top_k_overlap']:.3f}, "
            f"median {p['median_top_k_overlap']:.3f}; same top-1 {p['same_top1']:.3f}"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
