"""OpenSearch search with and without the kd-reranker search pipeline, over dev queries.

    scripts/opensearch.sh start        # the node with ml-commons and neural-search
    python benchmarks/bench_opensearch_pipeline.py --queries ../shared/data/homedepot/dev.parquet

Indexes the demo catalog into OpenSearch (with the model's product text), starts `reranker serve
--no-index` with the default model, wires the pipeline (`reranker opensearch-pipeline`) and times
client-side searches of `size` 10: plain BM25, the pipeline reranking the page only (window 1:
10 hits reranked) and the default window (10: 100 reranked). The default window runs the query
set twice: cold (every product sent for the first time: a late student encodes it) and warm
(the service's state cache holds them); window 1 runs warm. Where the time goes: OpenSearch's
own `took`, and the service's time per request (`kd_stage_seconds` on /metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
import uuid

import httpx
import numpy as np
import pyarrow.parquet as pq
from _common import start_service
from tqdm.auto import tqdm

from reranker.catalog import read_catalog
from reranker.index.opensearch import ConnectionOptions, index_catalog_opensearch
from reranker.index.opensearch_pipeline import PipelineSpec, rerank_ext, wire
from reranker.models import model_fields
from reranker.pipeline import default_model_dir


def pct(values):
    ms = np.asarray(values) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def service_seconds(url: str) -> tuple[float, int]:
    text = httpx.get(f"{url}/metrics").text
    total = re.search(r'kd_stage_seconds_sum\{stage="rerank"\} ([0-9.e+-]+)', text)
    count = re.search(r'kd_stage_seconds_count\{stage="rerank"\} ([0-9.e+-]+)', text)
    return (float(total.group(1)) if total else 0.0, int(float(count.group(1))) if count else 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", default="demo/products.parquet")
    ap.add_argument("--queries", required=True)
    ap.add_argument("--n-queries", type=int, default=200)
    ap.add_argument("--url", default=os.environ.get("OPENSEARCH_URL", "http://127.0.0.1:9200"))
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument(
        "--product-states",
        help="an embedded index of the catalog with the model's states, for the service "
        "(`reranker serve --product-states`)",
    )
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    options = ConnectionOptions(args.url, timeout=60)
    client = options.client()
    model = default_model_dir()
    alias = f"bench-{uuid.uuid4().hex[:6]}"
    t0 = time.perf_counter()
    index_catalog_opensearch(
        read_catalog(args.catalog), options, alias, rerank_fields=model_fields(model)
    )
    index_s = time.perf_counter() - t0
    queries = list(dict.fromkeys(pq.read_table(args.queries).column("query").to_pylist()))
    queries = queries[: args.n_queries]
    states = ["--product-states", args.product_states] if args.product_states else []
    service, url = start_service(args.port, *states)
    results: dict = {
        "machine": platform.processor() or platform.machine(),
        "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip("\t: "),
        "queries": len(queries),
        "index_seconds": index_s,
        "model": str(model),
        "product_states": args.product_states,
    }
    try:

        def run(pipeline: str | None, label: str) -> None:
            walls, tooks = [], []
            s0, c0 = service_seconds(url)
            for q in tqdm(queries, desc=label, unit="query"):
                body = {
                    "query": {"multi_match": {"query": q, "fields": ["title^2", "all_text"]}},
                    "size": 10,
                }
                if pipeline:
                    body["ext"] = rerank_ext(q)
                t = time.perf_counter()
                res = client.search(
                    index=alias, body=body, params={"search_pipeline": pipeline or "_none"}
                )
                walls.append(time.perf_counter() - t)
                tooks.append(res["took"] / 1e3)
            s1, c1 = service_seconds(url)
            results[label] = {
                "client": pct(walls),
                "opensearch_took": pct(tooks),
                "service_mean_ms": 1e3 * (s1 - s0) / max(1, c1 - c0),
                "service_requests": c1 - c0,
            }

        for _ in range(20):  # warm the node's caches for BM25
            client.search(index=alias, body={"query": {"match": {"title": "drill"}}, "size": 10})
        # the service alone: /v1/rerank of each query's BM25 top 100 as OpenSearch would send
        # them (first time each text reaches the service, unless an earlier query sent it)
        direct, http = [], httpx.Client(timeout=30)
        for q in tqdm(queries, desc="/v1/rerank of the top 100", unit="query"):
            body = {
                "query": {"multi_match": {"query": q, "fields": ["title^2", "all_text"]}},
                "size": 100,
                "_source": ["rerank_text"],
            }
            hits = client.search(index=alias, body=body, params={"search_pipeline": "_none"})
            docs = [h["_source"]["rerank_text"] for h in hits["hits"]["hits"]]
            if len(docs) < 100:
                continue
            t = time.perf_counter()
            http.post(f"{url}/v1/rerank", json={"query": q, "documents": docs}).raise_for_status()
            direct.append(time.perf_counter() - t)
        results["v1_rerank_100_first_time"] = pct(direct) | {"queries": len(direct)}
        run(None, "bm25")
        for window, passes in ((10, ("cold", "warm")), (1, ("warm",))):
            name = f"kd-bench-{window}"
            wire(PipelineSpec(name, url, window=window, timeout_s=5), options)
            for p in passes:
                run(name, f"window{window}_{p}")
    finally:
        service.terminate()
        client.indices.delete(index=f"{alias}-*", ignore_unavailable=True)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
