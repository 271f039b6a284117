"""Load test of `reranker serve` on loopback with a real HTTP load generator (hey).

    python benchmarks/bench_service.py [--model DIR] [--requests 64]

POST /rerank with 100 documents per request (the BM25 top 100 of the demo catalog for one dev
query, as catalog objects) at 1, 8 and 32 concurrent clients, against the service as it runs
(micro-batching) and against the same service scoring one request at a time
(`--max-batch-pairs 1`); then POST /search (the same query, k=100) against both, where the
products' stored forms (token ids or a late student's states) come from the index. The /rerank
body is the same for every request, so a late student's product states are cached after the
first one. Each run is bounded: `hey -n REQUESTS` and a wall-clock timeout; the
deadline is set high so that every request is reranked, and the script checks that no request
failed and none fell back. Needs `hey` (Debian package) and the [serve] extra.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _common import stand_in_model

from reranker import BM25Index, default_model_dir
from reranker.index.build import index_catalog


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(model: Path, extra: list[str], index: Path | None = None) -> tuple[str, subprocess.Popen]:
    port = free_port()
    where = ["--index-dir", str(index)] if index else ["--no-index"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reranker.cli",
            "serve",
            *where,
            "--model",
            str(model),
            "--port",
            str(port),
            "--deadline-ms",
            "60000",
            *extra,
        ],
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return url, proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the service did not start")


def fallbacks(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(v) for v in re.findall(r"^kd_fallbacks_total\{[^}]*\} (\S+)$", text, re.M))


def run_hey(
    url: str, body: Path, requests: int, concurrency: int, timeout_s: int, path: str = "/rerank"
) -> dict:
    out = subprocess.run(
        [
            "hey",
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-D",
            str(body),
            "-t",
            "120",
            "-o",
            "csv",
            f"{url}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=True,
    ).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    lat = np.array([float(r["response-time"]) for r in rows]) * 1e3
    offsets = np.array([float(r["offset"]) for r in rows])
    wall = float((offsets + lat / 1e3).max())
    errors = sum(r["status-code"] != "200" for r in rows)
    return {
        "requests": len(rows),
        "errors": errors,
        "throughput_rps": len(rows) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model directory (default: installed student or stand-in)")
    ap.add_argument("--catalog", default="demo/products.parquet")
    ap.add_argument("--query", default="cordless drill")
    ap.add_argument("--requests", type=int, default=64, help="per run")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--timeout", type=int, default=600, help="seconds per run, at most")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    if shutil.which("hey") is None:
        sys.exit("hey is needed (Debian: apt-get install hey)")
    work = Path(tempfile.mkdtemp(prefix="kd-bench-service-"))
    results: dict = {"runs": []}
    try:
        model = Path(args.model) if args.model else default_model_dir() or stand_in_model(work)
        from reranker import open_model

        index_catalog(args.catalog, work / "index", model=open_model(model))
        cands = BM25Index.load(work / "index").retrieve(args.query, 100)
        docs = [{"id": c.product.id, "title": c.product.title, **c.product.fields} for c in cands]
        body = work / "body.json"
        body.write_text(json.dumps({"query": args.query, "documents": docs}))
        search_body = work / "search.json"
        search_body.write_text(json.dumps({"query": args.query, "k": 100}))
        results |= {"model": str(model), "documents": len(docs), "body_bytes": body.stat().st_size}
        modes = (
            ("micro-batching", []),
            ("micro-batching, no wait", ["--batch-wait-ms", "0"]),
            ("one at a time", ["--max-batch-pairs", "1"]),
        )
        for mode, extra in modes:
            url, proc = start(model, extra, work / "index")
            try:
                for path, b in (("/rerank", body), ("/search", search_body)):
                    run_hey(url, b, 4, 1, args.timeout, path)  # warm-up
                    for c in args.concurrency:
                        r = run_hey(url, b, args.requests, c, args.timeout, path)
                        r |= {"mode": mode, "endpoint": path, "concurrency": c}
                        results["runs"].append(r)
                        print(json.dumps(r), flush=True)
                results.setdefault("fallbacks", {})[mode] = fallbacks(url)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
        # resident memory of a service holding the model and the demo index, after /search load
        url, proc = start(model, [], work / "index")
        try:
            rss_idle = rss_mb(proc.pid)
            for q in ("cordless drill", "garden hose", "led light bulb", "toilet seat") * 25:
                httpx.post(f"{url}/search", json={"query": q}, timeout=60).raise_for_status()
            results["rss_mb"] = {"after start": rss_idle, "after 100 searches": rss_mb(proc.pid)}
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nmodel {results['model']}, {results['documents']} documents per request "
        f"({results['body_bytes']:,} bytes), {args.requests} requests per run\n"
    )
    print("| endpoint | server | clients | throughput | p50 | p99 | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(
            f"| {r['endpoint']} | {r['mode']} | {r['concurrency']} | "
            f"{r['throughput_rps']:.2f} req/s | "
            f"{r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['errors']} |"
        )
    print(f"\nfallbacks (must be 0): {results['fallbacks']}")
    print(
        f"resident memory, `reranker serve` with the model and the demo index: {results['rss_mb']}"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    if any(r["errors"] for r in results["runs"]) or any(results["fallbacks"].values()):
        sys.exit("errors or fallbacks during the load test")


if __name__ == "__main__":
    main()
