"""Results table and plot of the reference run (scripts/reference_run.sh).

    python -m reranker.training.report training/results --output training/REPORT.md \\
        --plot training/student_vs_augmentation.png

Reads ``eval_*.json`` written by ``reranker eval --json`` (``bm25``, ``teacher*``, ``control*``,
and students named ``student-<kind>-aug<N>[-e<epochs>]`` or ``late-<kind>-aug<N>[-e<epochs>]``)
and ``wall_seconds.txt``; writes a Markdown table
and a PNG of student quality against the number of augmented pairs (a line per student kind),
with the teacher, the control and BM25 as horizontal lines.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

STUDENT = re.compile(r"eval_((?:student|late)-.*-aug(\d+)(?:-e\d+)?)\.json$")
STUDENT_PREFIXES = ("student-", "late-")


def _fixed_order(name: str) -> tuple[int, str]:
    for i, prefix in enumerate(("bm25", "teacher", "control")):
        if name.startswith(prefix):
            return i, name
    return 3, name


def load(results: Path) -> tuple[dict[str, dict], list[tuple[int, str, dict]], dict[str, int]]:
    fixed = {}
    names = [p.name[len("eval_") : -len(".json")] for p in results.glob("eval_*.json")]
    for name in sorted((n for n in names if not n.startswith(STUDENT_PREFIXES)), key=_fixed_order):
        fixed[name] = json.loads((results / f"eval_{name}.json").read_text())
    students = []
    for path in sorted(results.glob("eval_*.json")):
        m = STUDENT.search(path.name)
        if m:
            students.append((int(m.group(2)), m.group(1), json.loads(path.read_text())))
    students.sort()
    walls = {}
    wall_file = results / "wall_seconds.txt"
    if wall_file.is_file():
        for line in wall_file.read_text().splitlines():
            name, _, secs = line.rpartition(" ")
            walls[name] = int(secs)
    return fixed, students, walls


def table(fixed, students, walls) -> str:
    rows = [
        "| system | augmented pairs | NDCG@10 | pair accuracy | RMSE | end-to-end NDCG@10 | "
        "wall time |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(label, aug, m, wall_key):
        rmse = "—" if m.get("rmse") is None else f"{m['rmse']:.3f}"
        e2e = "—" if m.get("e2e_ndcg10") is None else f"{m['e2e_ndcg10']:.4f}"
        wall = f"{walls[wall_key] / 60:.0f} min" if wall_key in walls else "—"
        rows.append(
            f"| {label} | {aug} | {m['ndcg10']:.4f} | {m['pair_accuracy']:.4f} | {rmse} "
            f"| {e2e} | {wall} |"
        )

    def label(key: str) -> str:
        if key == "bm25":
            return "BM25"
        if key.startswith("control"):
            return f"{key} (student trained on the labels, no teacher)"
        return key

    for key, m in fixed.items():
        row(label(key), "—", m, key)
    for size, name, m in students:
        row(name, f"{size:,}", m, name)
    first = fixed.get("bm25") or (students[0][2] if students else {})
    if first:
        rows.append("")
        rows.append(
            f"Same {first['queries']} dev queries for NDCG@10 and {first['pair_queries']} "
            "for pair accuracy in every row."
        )
    return "\n".join(rows)


def plot(fixed, students, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    kinds: dict[str, list[tuple[int, dict]]] = {}
    for size, name, m in students:
        kind, _, rest = name.rpartition("-aug")
        epochs = rest.partition("-")[2]
        kinds.setdefault(f"{kind}-{epochs}" if epochs else kind, []).append((size, m))
    for ax, metric, title in (
        (axes[0], "pair_accuracy", "pair accuracy"),
        (axes[1], "ndcg10", "NDCG@10"),
    ):
        for kind, points in kinds.items():
            if len(points) < 2:
                continue
            xs = [s for s, _ in points]
            ax.plot(xs, [m[metric] for _, m in points], "o-", label=f"{kind} (margin-MSE)")
        for key, m in fixed.items():
            style = "-." if key == "bm25" else ":" if key.startswith("control") else "--"
            ax.axhline(
                m[metric], linestyle=style, color="grey" if key == "bm25" else None, label=key
            )
        ax.set_xlabel("augmented pairs scored by the teacher")
        ax.set_title(f"dev {title}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    fixed, students, walls = load(args.results)
    text = "# Reference run: results on dev\n\n" + table(fixed, students, walls) + "\n"
    if args.plot and students:
        plot(fixed, students, args.plot)
        text += f"\n![student quality against augmented pairs]({args.plot.name})\n"
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
