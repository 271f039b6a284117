"""A bounded soak of `reranker serve` on loopback: 16 clients mixing the native, Cohere (v1, v2)
and TEI dialects and searches through OpenSearch's rerank pipeline, 1% malformed bodies, and
OpenSearch stopped and restarted in the middle. Stops by itself (at most 10 minutes).

    scripts/opensearch.sh start
    python benchmarks/soak.py --duration 300 --json benchmarks/results/soak.json

Records: requests served per kind and status, the service's 5xx (goal 0), every malformed
request answered 4xx, fallbacks counted in the service's /metrics, OpenSearch-side failures
(searches during the restart), and the service's resident memory at start and end (goal: under
10% growth). Every request goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pyarrow.parquet as pq
from _common import start_service

from reranker.catalog import read_catalog
from reranker.index.opensearch import ConnectionOptions, index_catalog_opensearch
from reranker.index.opensearch_pipeline import PipelineSpec, rerank_ext, wire
from reranker.models import model_fields
from reranker.pipeline import default_model_dir

MAX_SECONDS = 600
KINDS = ("native", "cohere-v1", "cohere-v2", "tei", "opensearch")
WEIGHTS = (0.3, 0.15, 0.15, 0.25, 0.15)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fallbacks(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        m[0]: float(m[1]) for m in re.findall(r'kd_fallbacks_total\{reason="(\w+)"\} (\S+)', text)
    }


def body_for(kind: str, query: str, docs: list[str]) -> tuple[str, dict]:
    if kind == "native":
        return "/rerank", {"query": query, "documents": docs, "top_n": 10}
    if kind == "cohere-v1":
        return "/v1/rerank", {"query": query, "documents": [{"text": d} for d in docs], "top_n": 10}
    if kind == "cohere-v2":
        return "/v2/rerank", {"model": "kd", "query": query, "documents": docs, "top_n": 10}
    return "/rerank", {"query": query, "texts": docs, "return_text": False}


MALFORMED = (
    b"{not json",
    b'{"query": 3, "documents": "x"}',
    b'{"query": "x", "texts": [1, 2]}',
    b'{"documents": ["a"]}',
    b"[]",
)


async def client(i, state, titles, queries, url, os_client, alias, pipeline, stats):
    rng = random.Random(1000 + i)
    async with httpx.AsyncClient(timeout=10) as http:
        while time.monotonic() < state["deadline"]:
            kind = rng.choices(KINDS, WEIGHTS)[0]
            query = rng.choice(queries)
            if kind != "opensearch" and rng.random() < 0.01:
                path = rng.choice(["/rerank", "/v1/rerank", "/v2/rerank"])
                try:
                    r = await http.post(
                        url + path,
                        content=rng.choice(MALFORMED),
                        headers={"content-type": "application/json"},
                    )
                    stats["malformed", r.status_code // 100] += 1
                except httpx.HTTPError as exc:
                    stats["malformed", type(exc).__name__] += 1
                continue
            if kind == "opensearch":
                body = {
                    "query": {"multi_match": {"query": query, "fields": ["title^2", "all_text"]}},
                    "size": 10,
                    "ext": rerank_ext(query),
                }
                try:
                    await asyncio.to_thread(
                        os_client.search,
                        index=alias,
                        body=body,
                        params={"search_pipeline": pipeline},
                        request_timeout=10,
                    )
                    stats["opensearch", 2] += 1
                except Exception as exc:
                    stats["opensearch", type(exc).__name__] += 1
                continue
            docs = rng.sample(titles, rng.randint(20, 100))
            path, body = body_for(kind, query, docs)
            try:
                r = await http.post(url + path, json=body)
                stats[kind, r.status_code // 100] += 1
                if r.status_code == 200 and r.headers.get("x-reranked") == "false":
                    stats[kind, "not reranked"] += 1
            except httpx.HTTPError as exc:
                stats[kind, type(exc).__name__] += 1


def restart_opensearch(port: int, at: float, log: list) -> None:
    time.sleep(at)
    env = dict(os.environ, OPENSEARCH_PORT=str(port))
    t0 = time.monotonic()
    subprocess.run(["bash", "scripts/opensearch.sh", "stop"], env=env, check=True)
    log.append(("stopped", round(time.monotonic() - t0, 1)))
    time.sleep(5)
    subprocess.run(["bash", "scripts/opensearch.sh", "start"], env=env, check=True)
    log.append(("started again", round(time.monotonic() - t0, 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=300)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument(
        "--opensearch-port", type=int, default=int(os.environ.get("OPENSEARCH_PORT", 9200))
    )
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--catalog", default="demo/products.parquet")
    ap.add_argument("--queries", default="../shared/data/homedepot/dev.parquet")
    ap.add_argument(
        "--pool",
        type=int,
        default=5000,
        help="catalog titles the clients draw from (sent once before the start: a warm cache)",
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=0,
        help="seconds of the same concurrent traffic before the soak starts (not counted; the "
        "starting memory is taken after it)",
    )
    ap.add_argument(
        "--product-states",
        help="the catalog's stored states for the service (`reranker serve --product-states`)",
    )
    ap.add_argument("--json")
    args = ap.parse_args()
    duration = min(args.duration, MAX_SECONDS - 60)

    catalog = read_catalog(args.catalog)
    titles = [p.title for p in catalog.products[: args.pool]]
    queries = sorted(set(pq.read_table(args.queries).column("query").to_pylist()))
    os_url = f"http://127.0.0.1:{args.opensearch_port}"
    options = ConnectionOptions(os_url, timeout=10, retries=0)
    alias = f"soak-{uuid.uuid4().hex[:6]}"
    index_catalog_opensearch(
        catalog, options, alias, rerank_fields=model_fields(default_model_dir())
    )
    states = ["--product-states", args.product_states] if args.product_states else []
    service, url = start_service(args.port, *states)
    pipeline = f"soak-{uuid.uuid4().hex[:6]}"
    report_ids = wire(PipelineSpec(pipeline, url, window=3), options)
    # warm-up: every title of the pool once (the service's text cache), then the starting memory
    for i in range(0, len(titles), 100):
        httpx.post(
            f"{url}/rerank", json={"query": "drill", "documents": titles[i : i + 100]}, timeout=60
        )
    rss_sequential = rss_mb(service.pid)
    if args.warmup:  # the same traffic, concurrent, not counted (no OpenSearch restart)
        warm: Counter = Counter()
        warm_state = {"deadline": time.monotonic() + args.warmup}
        warm_client = options.client()

        async def warm_up():
            await asyncio.gather(
                *[
                    client(
                        i + 100,
                        args,
                        warm_state,
                        titles,
                        queries,
                        url,
                        warm_client,
                        alias,
                        pipeline,
                        warm,
                    )
                    for i in range(args.clients)
                ]
            )

        asyncio.run(warm_up())
    rss_start = rss_mb(service.pid)
    rss_samples: list[tuple[float, float]] = []

    def sample_rss():
        while time.monotonic() < state["deadline"]:
            rss_samples.append((round(time.monotonic() - t0, 1), round(rss_mb(service.pid), 1)))
            time.sleep(15)

    fb_start = fallbacks(url)
    stats: Counter = Counter()
    restarts: list = []
    state = {"deadline": time.monotonic() + duration}
    threading.Thread(
        target=restart_opensearch,
        args=(args.opensearch_port, duration * 0.4, restarts),
        daemon=True,
    ).start()
    t0 = time.monotonic()
    threading.Thread(target=sample_rss, daemon=True).start()
    os_client = options.client()

    async def run():
        await asyncio.gather(
            *[
                client(i, state, titles, queries, url, os_client, alias, pipeline, stats)
                for i in range(args.clients)
            ]
        )

    asyncio.run(run())
    seconds = time.monotonic() - t0
    rss_end = rss_mb(service.pid)
    served = {k: stats[k, 2] for k in KINDS}
    reranked = {k: stats[k, 2] - stats[k, "not reranked"] for k in KINDS if k != "opensearch"}
    fb_end = fallbacks(url)
    service.terminate()
    for _ in range(60):  # OpenSearch may still be coming back
        try:
            options.client().cluster.health(wait_for_status="yellow", request_timeout=5)
            break
        except Exception:
            time.sleep(1)
    try:
        options.client().indices.delete(index=f"{alias}-*", ignore_unavailable=True)
        options.client().transport.perform_request("DELETE", f"/_search/pipeline/{pipeline}")
    except Exception:
        pass
    service_kinds = [k for k in KINDS if k != "opensearch"]
    result = {
        "seconds": round(seconds, 1),
        "clients": args.clients,
        "requests": sum(v for (k, s), v in stats.items() if s != "not reranked"),
        "by_kind_and_status": {f"{k} {s}": v for (k, s), v in sorted(stats.items(), key=str)},
        "service_5xx": sum(
            v for (k, s), v in stats.items() if k in service_kinds + ["malformed"] and s == 5
        ),
        "service_transport_errors": sum(
            v
            for (k, s), v in stats.items()
            if k in service_kinds and isinstance(s, str) and s != "not reranked"
        ),
        "served_2xx": served,
        "reranked": reranked,
        "malformed": sum(v for (k, _), v in stats.items() if k == "malformed"),
        "malformed_4xx": stats["malformed", 4],
        "fallbacks_during_run": {r: fb_end.get(r, 0) - fb_start.get(r, 0) for r in fb_end},
        "opensearch_restart": restarts,
        "rss_mb_after_sequential_warmup": round(rss_sequential, 1),
        "concurrent_warmup_seconds": args.warmup,
        "rss_mb_start": round(rss_start, 1),
        "rss_mb_end": round(rss_end, 1),
        "rss_growth": round(rss_end / rss_start - 1, 4),
        "rss_mb_every_15_s": rss_samples,
        "pool_titles": len(titles),
        "product_states": args.product_states,
        "connector": report_ids.connector_id,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
