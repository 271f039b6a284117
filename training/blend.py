"""Choosing a cascade's ``first_weight``: two students' blend on held-out and dev pairs.

    python -m reranker.training.blend --first late --second accurate \\
        --choose-on train_holdout.parquet --report-on dev.parquet --catalog products.parquet \\
        --output training/results/students/blend.json

Scores every judged pair of both files with both models once, then for each weight *w* of the
grid evaluates ``second raw + w * first raw`` (the order a cascade with ``first_weight`` *w*
gives its rescored products) with the evaluation protocol. The weight is the one with the best
pair accuracy on ``--choose-on`` (judged pairs held out of every model's training, never dev);
``--report-on`` (dev) is only reported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from reranker.training.evaluate import evaluate, load_judged

GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def _scores(models, judged, texts) -> dict[str, dict[str, np.ndarray]]:
    from tqdm.auto import tqdm

    out: dict[str, dict[str, np.ndarray]] = {}
    for q, (ids, _) in tqdm(judged.evaluable().items(), desc="scoring", unit="query"):
        out[q] = {n: m.score(q, [texts[p] for p in ids]).raw for n, m in models.items()}
    return out


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
    for which, path in (("choose", args.choose_on), ("report", args.report_on)):
        judged = load_judged(path)
        cache = _scores(models, judged, texts)
        for w in GRID:

            def score(q, ids, w=w, cache=cache):
                return cache[q]["second"] + w * cache[q]["first"]

            m = evaluate(judged, score, progress=False)
            rows.append({"set": which, "file": Path(path).name, "weight": w, **m.to_dict()})
    choose = [r for r in rows if r["set"] == "choose"]
    best = max(choose, key=lambda r: (r["pair_accuracy"], -r["weight"]))["weight"]
    result = {"first": args.first, "second": args.second, "chosen_weight": best, "rows": rows}
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(f"{'set':>7} {'w':>5} {'pair acc':>9} {'NDCG@10':>8}")
    for r in rows:
        print(f"{r['set']:>7} {r['weight']:>5} {r['pair_accuracy']:>9.4f} {r['ndcg10']:>8.4f}")
    print(f"chosen on {Path(args.choose_on).name}: first_weight {best}")


if __name__ == "__main__":
    main()
