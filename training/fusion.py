"""Do the first stage's own scores add to the reranker's? The default's blend plus weighted
retrieval signals, weights chosen on held-out judged pairs, dev only reported.

    python -m reranker.training.fusion --index-dir HYBRID_INDEX --first late --second cross \\
        --first-weight 0.5 --choose-on train_holdout.parquet --report-on dev.parquet \\
        --catalog products.parquet --output training/results/students/fusion_retrieval.json

For every judged pair: both students' raw scores, the hybrid index's cosine similarity of the
query and product embeddings, and the product's BM25 score divided by the query's best BM25
score over the catalog (what the hybrid first stage adds up). For each (dense, BM25) weight of a
grid, ``second + first_weight * first + a * cosine + b * bm25 / max`` is evaluated with the
evaluation protocol; the pair is chosen by pair accuracy on ``--choose-on``. The signals are
free at serving time (the first stage computed them), so any gain would be worth having.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from reranker.training.blend import bootstrap, paired_gain
from reranker.training.evaluate import evaluate, load_judged

DENSE_GRID = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
BM25_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)
FEATURES = ("first", "second", "dense", "bm25")


def features(index, models: dict, judged, texts) -> dict:
    """{query: {feature: array over the query's judged products}}."""
    from tqdm.auto import tqdm

    row = {p: i for i, p in enumerate(index.ids)}
    out = {}
    for q, (ids, _) in tqdm(judged.evaluable().items(), desc="scoring", unit="query"):
        rows = [row[p] for p in ids]
        bm25 = index.scores(q)
        top = float(bm25.max()) if bm25.max() > 0 else 1.0
        f = {n: m.score(q, [texts[p] for p in ids]).raw for n, m in models.items()}
        f["dense"] = index.dense.similarities(q)[rows]
        f["bm25"] = bm25[rows] / top
        out[q] = f
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index-dir", required=True, help="A hybrid index (dense vectors stored).")
    ap.add_argument("--first", required=True)
    ap.add_argument("--second", required=True)
    ap.add_argument("--first-weight", type=float, default=0.5)
    ap.add_argument("--choose-on", required=True)
    ap.add_argument("--report-on", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args()

    from reranker import BM25Index
    from reranker.models import open_model
    from reranker.training.data import catalog_texts

    index = BM25Index.load(args.index_dir)
    if index.dense is None:
        raise SystemExit(f"{args.index_dir} stores no dense vectors: build it without --no-dense")
    models = {"first": open_model(args.first), "second": open_model(args.second)}
    texts = catalog_texts(args.catalog, models["first"].config.fields)
    sets = {}
    for which, path in (("choose", args.choose_on), ("report", args.report_on)):
        judged = load_judged(path)
        sets[which] = (judged, features(index, models, judged, texts))

    def blend(f, a: float, b: float) -> np.ndarray:
        return f["second"] + args.first_weight * f["first"] + a * f["dense"] + b * f["bm25"]

    rows = []
    for a, b in itertools.product(DENSE_GRID, BM25_GRID):
        for which, (judged, cache) in sets.items():
            m = evaluate(judged, lambda q, ids, c=cache, a=a, b=b: blend(c[q], a, b))
            rows.append({"set": which, "dense": a, "bm25": b, **m.to_dict()})
    alone = {}
    for feat in FEATURES:
        for which, (judged, cache) in sets.items():
            m = evaluate(judged, lambda q, ids, c=cache, k=feat: c[q][k])
            alone[f"{feat} {which}"] = m.to_dict()
    choose = [r for r in rows if r["set"] == "choose"]
    best = max(choose, key=lambda r: (r["pair_accuracy"], -r["dense"] - r["bm25"]))
    gain = {
        which: bootstrap(
            paired_gain(
                judged,
                {q: blend(c, best["dense"], best["bm25"]) for q, c in cache.items()},
                {q: blend(c, 0, 0) for q, c in cache.items()},
            )
        )
        for which, (judged, cache) in sets.items()
    }
    result = {
        "first": args.first,
        "second": args.second,
        "first_weight": args.first_weight,
        "files": {"choose": Path(args.choose_on).name, "report": Path(args.report_on).name},
        "chosen": {"dense": best["dense"], "bm25": best["bm25"]},
        "rows": rows,
        "alone": alone,
        "gain_over_blend": gain,
    }
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(f"{'dense':>5} {'bm25':>5} | choose acc  ndcg | report acc  ndcg")
    by = {(r["dense"], r["bm25"], r["set"]): r for r in rows}
    for a, b in itertools.product(DENSE_GRID, BM25_GRID):
        c, r = by[(a, b, "choose")], by[(a, b, "report")]
        print(
            f"{a:>5} {b:>5} | {c['pair_accuracy']:.4f} {c['ndcg10']:.4f} | "
            f"{r['pair_accuracy']:.4f} {r['ndcg10']:.4f}"
        )
    print(f"chosen on {Path(args.choose_on).name}: dense {best['dense']}, bm25 {best['bm25']}")
    for name, m in alone.items():
        print(f"alone, {name}: pair accuracy {m['pair_accuracy']:.4f}, NDCG@10 {m['ndcg10']:.4f}")


if __name__ == "__main__":
    main()
