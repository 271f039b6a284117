"""Other ways to combine the default's two students (issue 15, fourteenth session): the shipped
blend ``cross raw + w * late raw`` against the same blend of per-query standardised scores, of
per-query ranks and of sigmoid probabilities, over every pair of seeds.

    python scripts/blend_forms.py --cache fs_cache.parquet --late s13 s14 s15 --cross s13 s14 s15 \\
        --held-out train_holdout.parquet --dev dev.parquet \\
        --output training/results/students/blend_forms.json

``--cache``: the score cache of ``scripts/fields_seeds.py`` (every student's raw score of every
judged pair of both files, title alone; nothing is scored here). Held-out pairs are the choosing
set, dev is only reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from reranker.errors import RerankerError
from reranker.training.evaluate import evaluate, load_judged


def zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 1e-6 else 1.0)


def ranks(x: np.ndarray) -> np.ndarray:  # 0 (lowest) … 1 (highest) within the query
    return np.argsort(np.argsort(x)).astype(float) / max(len(x) - 1, 1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


FORMS = {
    "raw (shipped)": lambda c, late, w: c + w * late,
    "per-query z-scores": lambda c, late, w: zscore(c) + w * zscore(late),
    "per-query ranks": lambda c, late, w: ranks(c) + w * ranks(late),
    "probabilities": lambda c, late, w: sigmoid(c) + w * sigmoid(late),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--late", nargs="+", required=True, help="late seed names in the cache")
    ap.add_argument("--cross", nargs="+", required=True, help="cross-encoder seed names")
    ap.add_argument("--held-out", required=True)
    ap.add_argument("--dev", required=True)
    ap.add_argument("--fields", default="title")
    ap.add_argument("--grid", nargs="+", type=float, default=[0.1, 0.25, 0.4, 0.6])
    ap.add_argument("--output", required=True, type=Path)
    args = ap.parse_args()
    if not args.cache.is_file():
        raise SystemExit(f"blend_forms: no score cache at {args.cache}")
    try:
        judged = {"held_out": load_judged(args.held_out), "dev": load_judged(args.dev)}
    except RerankerError as exc:
        raise SystemExit(f"blend_forms: {exc}") from None
    t = pq.read_table(args.cache).to_pydict()
    raw: dict = {}
    for m, f, s, q, i, r in zip(*(t[c] for c in t), strict=True):
        if f == args.fields:
            raw.setdefault((m, s), {}).setdefault(q, {})[i] = r
    scores = {
        k: {q: np.array([v[i] for i in sorted(v)]) for q, v in d.items()} for k, d in raw.items()
    }
    wanted = [f"late {a}" for a in args.late] + [f"cross {b}" for b in args.cross]
    missing = [m for m in wanted if (m, "dev") not in scores]
    if missing:
        raise SystemExit(f"blend_forms: {', '.join(missing)} not in {args.cache}")

    def metrics(s: str, combined: dict) -> list[float]:
        m = evaluate(judged[s], lambda q, ids: combined[q], progress=False)
        return [m.pair_accuracy, m.ndcg10]

    out: dict = {
        "what": "the default's two students combined four ways at several weights, every pair of "
        "seeds (int8, title): mean and sd over the pairs of [pair accuracy, NDCG@10]",
        "pairs": [[a, b] for a in args.late for b in args.cross],
        "forms": {},
    }
    for form, fn in FORMS.items():
        out["forms"][form] = {}
        for w in [0.25] if form == "raw (shipped)" else args.grid:
            entry = {}
            for s in judged:
                vals = []
                for a in args.late:
                    for b in args.cross:
                        c, late = scores[f"cross {b}", s], scores[f"late {a}", s]
                        vals.append(metrics(s, {q: fn(c[q], late[q], w) for q in c}))
                entry[s] = {
                    what: {
                        "mean": round(statistics.mean(v[i] for v in vals), 4),
                        "sd": round(statistics.stdev(v[i] for v in vals), 4),
                    }
                    for i, what in enumerate(("pair_accuracy", "ndcg10"))
                }
            out["forms"][form][str(w)] = entry
            print(form, w, json.dumps(entry), flush=True)
    args.output.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
