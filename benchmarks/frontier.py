"""The quality-vs-latency frontier: dev pair accuracy and end-to-end NDCG@10 against rerank p50
at k = 100, one point per student, from measured files only.

    python benchmarks/frontier.py --latency benchmarks/results/rerank_profiles.json \\
        --point "default=training/results/students/eval_late-f48-int8.json@late-f48" \\
        --point "BM25=training/results/eval_bm25.json@0" \\
        --line "teacher=training/results/teacher/eval_ensemble.json" \\
        --plot benchmarks/results/frontier_profiles.png --table

A point is ``LABEL=EVAL_JSON@LATENCY``: ``EVAL_JSON`` from ``reranker eval --json``, and
``LATENCY`` either the name of a model in the ``--latency`` files (``bench_rerank.py --json``:
its int8 p50 at k = 100) or milliseconds. A ``--line`` is drawn across (a system whose latency
was not measured, such as the teacher). Points without an end-to-end figure appear on the pair
accuracy panel only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def latencies(paths: list[str]) -> dict[str, dict]:
    """Model name → its int8 (else first variant's) k=100 latency row, from bench_rerank JSON."""
    out: dict[str, dict] = {}
    for p in paths:
        for m in json.loads(Path(p).read_text())["models"]:
            variants = m["variants"]
            v = variants.get("int8") or next(iter(variants.values()))
            out[m["model"]] = v["latency"]["100"] if "100" in v["latency"] else v["latency"][100]
    return out


def parse_points(specs: list[str], lat: dict[str, dict]) -> list[dict]:
    points = []
    for spec in specs:
        label, _, rest = spec.partition("=")
        path, _, where = rest.rpartition("@")
        try:
            ms, p99 = float(where), None
        except ValueError:
            if where not in lat:
                raise SystemExit(f"{spec}: no model named {where!r} in the latency files") from None
            ms, p99 = lat[where]["p50_ms"], lat[where]["p99_ms"]
        points.append(
            {"label": label, "p50_ms": ms, "p99_ms": p99} | json.loads(Path(path).read_text())
        )
    return points


def table(points: list[dict], lines: dict[str, dict]) -> str:
    rows = [
        "| system | rerank p50 / p99 at k=100 | dev pair accuracy | dev NDCG@10 "
        "| end-to-end NDCG@10 |",
        "|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: p["p50_ms"]):
        lat = f"{p['p50_ms']:.1f} ms" + (f" / {p['p99_ms']:.1f} ms" if p["p99_ms"] else "")
        e2e = "—" if p.get("e2e_ndcg10") is None else f"{p['e2e_ndcg10']:.4f}"
        rows.append(
            f"| {p['label']} | {lat} | {p['pair_accuracy']:.4f} | {p['ndcg10']:.4f} | {e2e} |"
        )
    for name, m in lines.items():
        e2e = "—" if m.get("e2e_ndcg10") is None else f"{m['e2e_ndcg10']:.4f}"
        rows.append(
            f"| {name} | not measured | {m['pair_accuracy']:.4f} | {m['ndcg10']:.4f} | {e2e} |"
        )
    return "\n".join(rows)


def plot(points: list[dict], lines: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in (
        (axes[0], "pair_accuracy", "dev pair accuracy"),
        (axes[1], "e2e_ndcg10", "dev end-to-end NDCG@10 (the first stage's top 100 reranked)"),
    ):
        for p in points:
            if p.get(key) is None:
                continue
            x = max(p["p50_ms"], 0.3)  # BM25 (0 ms) on the log axis
            ax.scatter([x], [p[key]], s=30, zorder=3)
            ax.annotate(
                p["label"], (x, p[key]), fontsize=7, xytext=(4, 3), textcoords="offset points"
            )
        for (name, m), style in zip(lines.items(), ("--", ":", "-."), strict=False):
            if m.get(key) is not None:
                ax.axhline(m[key], linestyle=style, color="black", label=name)
        ax.axvline(30, color="red", alpha=0.4, label="30 ms budget (default)")
        ax.axvline(150, color="orange", alpha=0.4, label="150 ms (accurate)")
        ax.set_xscale("log")
        ax.set_xlim(0.2, 400)
        ax.set_xlabel("rerank p50 at k = 100, ms (log; BM25 drawn at 0.3)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency", action="append", default=[])
    ap.add_argument("--point", action="append", default=[])
    ap.add_argument("--line", action="append", default=[])
    ap.add_argument("--plot")
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args()
    points = parse_points(a.point, latencies(a.latency))
    lines = {
        name: json.loads(Path(path).read_text())
        for name, _, path in (s.partition("=") for s in a.line)
    }
    if a.plot:
        plot(points, lines, a.plot)
    if a.table:
        print(table(points, lines))


if __name__ == "__main__":
    main()
