"""Choosing a cascade's ``first_weight``: two students' blend on held-out and dev pairs.

    python -m reranker.training.blend --first late --second cross \\
        --choose-on train_holdout.parquet --report-on dev.parquet --catalog products.parquet \\
        --output training/results/students/blend.json

Scores every judged pair of both files with both models once, then for each weight *w* of the
grid evaluates ``second raw + w * first raw`` (the order a cascade with ``first_weight`` *w*
gives its rescored products) with the evaluation protocol. The weight is the one with the best
pair accuracy on ``--choose-on`` (judged pairs held out of every model's training, never dev);
``--report-on`` (dev) is only reported. For the chosen weight against 0, the mean per-query gain
in pair accuracy with a 95% bootstrap interval over queries (5,000 resamples, seed 0), per set
and pooled: is the gain larger than the noise of which queries were judged?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from reranker.training.evaluate import evaluate, load_judged, pair_accuracy

GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def _scores(models, judged, texts) -> dict[str, dict[str, np.ndarray]]:
    from tqdm.auto import tqdm

    out: dict[str, dict[str, np.ndarray]] = {}
    for q, (ids, _) in tqdm(judged.evaluable().items(), desc="scoring", unit="query"):
        out[q] = {n: m.score(q, [texts[p] for p in ids]).raw for n, m in models.items()}
    return out


def paired_gain(judged, new: dict, old: dict) -> list[float]:
    """Per query with a pair to order: pair accuracy with ``new`` scores ({query: array}) minus
    with ``old``."""
    gains = []
    for q, (_, rel) in judged.evaluable().items():
        base = pair_accuracy(old[q], rel)
        if base is not None:
            gains.append(pair_accuracy(new[q], rel) - base)
    return gains


def per_query_gain(judged, cache, w: float) -> list[float]:
    """Per query with a pair to order: pair accuracy of the blend at ``w`` minus at 0."""
    second = {q: c["second"] for q, c in cache.items()}
    blend = {q: c["second"] + w * c["first"] for q, c in cache.items()}
    return paired_gain(judged, blend, second)


def gain_summary(gains: dict[str, list[float]]) -> dict:
    """:func:`bootstrap` of the per-query gains of each set ("choose", "report") and pooled."""
    summary = {which: bootstrap(g) for which, g in gains.items()}
    summary["pooled"] = bootstrap([x for g in gains.values() for x in g])
    return summary


def print_rows(rows: list[dict], column: str, width: int) -> None:
    """The evaluated rows of a choice, one per set and value of ``column``."""
    print(f"{'set':>7} {column:<{width}} {'pair acc':>9} {'NDCG@10':>8}")
    for r in rows:
        print(
            f"{r['set']:>7} {r[column]!s:<{width}} {r['pair_accuracy']:>9.4f} {r['ndcg10']:>8.4f}"
        )


def print_gains(summary: dict, over: str) -> None:
    for which, g in summary.items():
        lo, hi = g["ci95"]
        print(
            f"pair accuracy gain over {over}, {which} ({g['queries']} queries): "
            f"{g['mean']:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}]"
        )


def bootstrap(values: list[float], n: int = 5000, seed: int = 0) -> dict:
    v = np.asarray(values)
    rng = np.random.default_rng(seed)
    means = [v[rng.integers(0, len(v), len(v))].mean() for _ in range(n)]
    return {
        "queries": len(v),
        "better": float((v > 0).mean()),
        "worse": float((v < 0).mean()),
        "mean": float(v.mean()),
        "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--first", required=True)
    ap.add_argument("--second", required=True)
    ap.add_argument("--choose-on", required=True)
    ap.add_argument("--report-on", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()

    from reranker.models import open_model
    from reranker.training.data import catalog_texts

    models = {"first": open_model(args.first), "second": open_model(args.second)}
    if models["first"].config.fields != models["second"].config.fields:
        raise SystemExit("the two models read different product fields")
    texts = catalog_texts(args.catalog, models["first"].config.fields)
    rows = []
    sets = {}
    for which, path in (("choose", args.choose_on), ("report", args.report_on)):
        judged = load_judged(path)
        cache = _scores(models, judged, texts)
        sets[which] = (judged, cache)
        for w in GRID:

            def score(q, ids, w=w, cache=cache):
                return cache[q]["second"] + w * cache[q]["first"]

            m = evaluate(judged, score, progress=False)
            rows.append({"set": which, "file": Path(path).name, "weight": w, **m.to_dict()})
    choose = [r for r in rows if r["set"] == "choose"]
    best = max(choose, key=lambda r: (r["pair_accuracy"], -r["weight"]))["weight"]
    gain = gain_summary({w: per_query_gain(*sets[w], best) for w in sets})
    result = {
        "first": args.first,
        "second": args.second,
        "chosen_weight": best,
        "rows": rows,
        "gain_over_0": gain,
    }
    Path(args.output).write_text(json.dumps(result, indent=1))
    print_rows(rows, "weight", 6)
    print(f"chosen on {Path(args.choose_on).name}: first_weight {best}")
    print_gains(gain, "0")


if __name__ == "__main__":
    main()
