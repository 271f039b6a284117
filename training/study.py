"""The augmentation study of ``scripts/student_run.sh`` (PHASE=study): table and plot.

    python -m reranker.training.study training/results/students \\
        --teacher training/results/teacher/eval_ensemble.json \\
        --control control=training/results/students/eval_control-late-part-fp32.json \\
        --output training/results/students/study.md --plot training/results/students/study.png

Reads ``eval_study-<arch>-x<times>-s<seed>-<variant>.json`` (``reranker eval --json`` of a
student trained on the study's labelled part plus ``times`` as many augmented pairs, with
``seed``) and writes, per size, the mean and the spread (sample standard deviation, min–max) of
dev pair accuracy and NDCG@10 over the seeds, and the plot with error bars (one standard
deviation), the teacher and the control as horizontal lines.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

STUDY = re.compile(
    r"eval_study-(?P<arch>[a-z0-9]+)-x(?P<times>\d+)-s(?P<seed>\d+)-(?P<var>\w+)\.json$"
)
METRICS = (("pair_accuracy", "pair accuracy"), ("ndcg10", "NDCG@10"))


def load(results: Path) -> dict[str, dict[int, dict[int, dict]]]:
    """arch → times → seed → metrics."""
    out: dict[str, dict[int, dict[int, dict]]] = {}
    for path in sorted(results.glob("eval_study-*.json")):
        m = STUDY.search(path.name)
        if m:
            out.setdefault(m["arch"], {}).setdefault(int(m["times"]), {})[int(m["seed"])] = (
                json.loads(path.read_text())
            )
    return out


def summary(points: dict[int, dict[int, dict]]) -> list[dict]:
    rows = []
    for times in sorted(points):
        seeds = points[times]
        row: dict = {"times": times, "seeds": sorted(seeds)}
        for key, _ in METRICS:
            v = np.array([seeds[s][key] for s in sorted(seeds)])
            row[key] = {
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else None,
                "min": float(v.min()),
                "max": float(v.max()),
                "values": v.tolist(),
            }
        rows.append(row)
    return rows


def table(arch: str, rows: list[dict], labelled: int | None, lines: dict[str, dict]) -> str:
    out = [
        f"| {arch} student, augmented pairs | seeds | pair accuracy mean ± sd (min–max) | "
        "NDCG@10 mean ± sd (min–max) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        size = f"×{r['times']}" + (f" ({r['times'] * labelled:,})" if labelled else "")
        cells = []
        for key, _ in METRICS:
            m = r[key]
            sd = "" if m["std"] is None else f" ± {m['std']:.4f}"
            cells.append(f"{m['mean']:.4f}{sd} ({m['min']:.4f}–{m['max']:.4f})")
        out.append(f"| {size} | {len(r['seeds'])} | {cells[0]} | {cells[1]} |")
    for name, m in lines.items():
        out.append(f"| {name} | — | {m['pair_accuracy']:.4f} | {m['ndcg10']:.4f} |")
    return "\n".join(out)


def plot(series: dict[str, list[dict]], lines: dict[str, dict], path: Path) -> None:
    """One line with error bars (one sd) per series (e.g. ``late``: all pairs of a list;
    ``triples``), every seed's value as a grey dot, the teacher and controls as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def pos(times: int) -> float:  # x0, x1, x2, x4, x8 evenly spaced (log2 beyond x1)
        return 0.0 if times == 0 else float(np.log2(times)) + 1.0

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ticks = sorted({r["times"] for rows in series.values() for r in rows})
    for ax, (key, title) in zip(axes, METRICS, strict=True):
        for name, rows in series.items():
            xs = [pos(r["times"]) for r in rows]
            ax.errorbar(
                xs,
                [r[key]["mean"] for r in rows],
                yerr=[r[key]["std"] or 0.0 for r in rows],
                fmt="o-" if len(rows) > 1 else "s",
                capsize=4,
                label=f"{name} student (mean ± sd over seeds)",
            )
            for r in rows:
                ax.scatter(
                    [pos(r["times"])] * len(r[key]["values"]),
                    r[key]["values"],
                    s=8,
                    color="grey",
                    zorder=3,
                )
        for (name, m), style in zip(lines.items(), ("--", ":", "-.", (0, (1, 3))), strict=False):
            ax.axhline(
                m[key], linestyle=style, color="black" if name == "teacher" else None, label=name
            )
        ax.set_xticks([pos(t) for t in ticks])
        ax.set_xticklabels([f"×{x}" for x in ticks])
        ax.set_xlabel("augmented pairs, multiples of the labelled set (log scale beyond ×1)")
        ax.set_title(f"dev {title}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--teacher", type=Path, help="the teacher's eval JSON (a line)")
    ap.add_argument(
        "--control",
        type=Path,
        action="append",
        default=[],
        help="NAME=eval JSON of a control (a line); repeatable",
    )
    ap.add_argument("--labelled", type=int, help="pairs in the study's labelled set")
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--plot", type=Path)
    a = ap.parse_args(argv)
    lines = {}
    if a.teacher:
        lines["teacher"] = json.loads(a.teacher.read_text())
    for c in a.control:
        name, _, path = str(c).partition("=")
        lines[name] = json.loads(Path(path).read_text())
    data = load(a.results)
    text, out = [], {}
    for arch, points in data.items():
        out[arch] = summary(points)
        text.append(table(arch, out[arch], a.labelled, lines))
    if a.plot and out:
        plot(out, lines, a.plot)
    a.output.write_text("\n\n".join(text) + "\n")
    a.output.with_suffix(".json").write_text(json.dumps(out, indent=2))
    print("\n\n".join(text))


if __name__ == "__main__":
    main()
