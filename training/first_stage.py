"""The first-stage study: which products reach the reranker, and what that does end to end.

    python -m reranker.training.first_stage --index-dir HYBRID_INDEX \\
        --judged train.parquet --sample 1500 \\
        --scores training/results/teacher/scores_train.parquet \\
        --output training/results/first_stage_train.json
    python -m reranker.training.first_stage --index-dir HYBRID_INDEX --judged dev.parquet \\
        --model cross --output training/results/first_stage_dev.json

``HYBRID_INDEX`` is an index built by ``reranker index`` with dense vectors (the default); its
vectors and embedder are reused, and BM25 is rebuilt in memory with and without stemming. For
each candidate set of 100 (BM25 with plain or stemmed tokens, dense alone, the hybrid
``bm25 / max + w * cosine`` for several ``w``, with several floors on the cosine of products
without a query token, and the index's own retrieval) it reports, over the evaluable queries of
``--judged`` (a seeded ``--sample`` of them): the share of each query's judged products in the
set (recall) and the same weighted by gain, the *oracle* end-to-end NDCG@10 (those products in
their judged order: the ceiling of any reranker), the first stage's own end-to-end NDCG@10, and
the end-to-end NDCG@10 of a reranker whose score of each judged pair is given: ``--scores`` (a
score file, e.g. the teacher's of train pairs) or ``--model`` (a runtime model scores the
judged pairs). End to end only judged products count, so this equals ``reranker eval --e2e``
for a reranker that scores each product on its own (not a cascade). The weight is chosen on
train queries; dev only reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from reranker.index import BM25Index
from reranker.text import BM25Tokenizer
from reranker.training.evaluate import gain, load_judged, ndcg_at, rank_order

K = 100
WEIGHTS = (0.5, 1.0, 1.5, 2.0, 3.0)
FLOORS = (0.3, 0.35, 0.4, 0.45, 0.5)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def _bm25_top(bm25: np.ndarray, k: int) -> np.ndarray:
    """BM25's candidates: products with a positive score only (as ``retrieve`` returns)."""
    masked = np.where(bm25 > 0, bm25, -np.inf)
    top = _top(masked, k)
    return top[np.isfinite(masked[top])]


def _fused(bm25: np.ndarray, cosine: np.ndarray, w: float, floor: float = -1.0) -> np.ndarray:
    top = bm25.max()
    fused = (bm25 / top if top > 0 else np.zeros_like(bm25)) + w * cosine
    return np.where((bm25 > 0) | (cosine >= floor), fused, -np.inf)


def _finite_top(scores: np.ndarray, k: int) -> np.ndarray:
    top = _top(scores, k)
    return top[np.isfinite(scores[top])]


def candidate_sets(hybrid: BM25Index, plain: BM25Index, query: str) -> dict[str, np.ndarray]:
    stemmed = hybrid.scores(query)
    unstemmed = plain.scores(query)
    cosine = hybrid.dense.similarities(query)
    sets = {
        "bm25": _bm25_top(unstemmed, K),
        "bm25-stem": _bm25_top(stemmed, K),
        "dense": _top(cosine, K),
    }
    for w in WEIGHTS:
        sets[f"hybrid-w{w}"] = _top(_fused(unstemmed, cosine, w), K)
        sets[f"hybrid-stem-w{w}"] = _top(_fused(stemmed, cosine, w), K)
    for floor in FLOORS:
        sets[f"hybrid-stem-w1.0-min{floor}"] = _finite_top(_fused(stemmed, cosine, 1.0, floor), K)
    # what the index itself returns (its weight and floor)
    sets["index"] = np.array([c.row for c in hybrid.retrieve(query, K)], dtype=np.int64)
    return sets


def candidate_measures(
    order: list[str], ids: list[str], rel: np.ndarray, score_of=None
) -> dict[str, float]:
    """One query's measures of a first stage's candidates (product ids, best first) against its
    judged products ``ids`` with relevance ``rel``: recall (share of the judged products found),
    gain_recall (the same weighted by gain), oracle_e2e (those found in their judged order: the
    ceiling of any reranker), first_stage_e2e (in retrieval order) and, with ``score_of`` (product
    id → a reranker's score), reranked_e2e (in that score's order)."""
    rel_of = dict(zip(ids, rel, strict=True))
    found = [p for p in order if p in rel_of]
    g = gain(rel)
    got = g[[ids.index(p) for p in found]].sum() if found else 0.0
    m = {
        "recall": len(found) / len(ids),
        "gain_recall": got / g.sum() if g.sum() > 0 else 1.0,
        "oracle_e2e": ndcg_at(sorted((rel_of[p] for p in found), reverse=True), rel),
        "first_stage_e2e": ndcg_at([rel_of[p] for p in found], rel),
    }
    if score_of is not None:
        s = [score_of(p) for p in found]
        m["reranked_e2e"] = ndcg_at([rel_of[found[i]] for i in rank_order(s, found)], rel)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index-dir", required=True, help="A hybrid index (reranker index).")
    ap.add_argument("--judged", required=True)
    ap.add_argument("--sample", type=int, help="Seeded draw of this many queries.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scores", help="Score file with a logit per judged pair.")
    ap.add_argument("--score-column", default="score")
    ap.add_argument("--model", help="Runtime model that scores the judged pairs.")
    ap.add_argument("--output", required=True)
    args = ap.parse_args()

    from tqdm.auto import tqdm

    from reranker.catalog import read_catalog

    hybrid = BM25Index.load(args.index_dir)
    if hybrid.dense is None or not hybrid.tokenizer.stemmer:
        raise SystemExit(f"{args.index_dir}: build it with `reranker index` (stemmed, dense)")
    catalog = read_catalog(hybrid.manifest["catalog"]["path"])
    plain = BM25Index.build(catalog, tokenizer=BM25Tokenizer(stemmer=None))
    assert plain.ids == hybrid.ids
    judged = load_judged(args.judged).evaluable()
    queries = sorted(judged)
    if args.sample:
        rng = np.random.default_rng(args.seed)
        queries = sorted(rng.choice(queries, args.sample, replace=False).tolist())

    score_of: dict[tuple[str, str], float] = {}
    if args.scores:
        from reranker.training.data import read_pairs

        t = read_pairs(args.scores, ("query", "product_id", args.score_column)).to_pydict()
        for q, p, s in zip(t["query"], t["product_id"], t[args.score_column], strict=True):
            score_of[(q, str(p))] = float(s)
    elif args.model:
        from reranker.models import open_model

        model = open_model(args.model)
        row_of = {p: i for i, p in enumerate(hybrid.ids)}
        for q in tqdm(queries, desc="scoring judged pairs", unit="query"):
            ids = judged[q][0]
            products = hybrid.products_at([row_of[i] for i in ids])
            texts = [p.text(model.config.fields) for p in products]
            for pid, s in zip(ids, model.score(q, texts).raw, strict=True):
                score_of[(q, pid)] = float(s)

    per: dict[str, dict[str, list[float]]] = {}
    for q in tqdm(queries, desc="first stages", unit="query"):
        ids, rel = judged[q]
        score = (lambda p, q=q: score_of[(q, p)]) if score_of else None
        for name, rows in candidate_sets(hybrid, plain, q).items():
            order = [hybrid.ids[r] for r in rows]
            m = per.setdefault(name, {})
            for k, v in candidate_measures(order, ids, rel, score).items():
                m.setdefault(k, []).append(v)
    result = {
        "judged": str(args.judged),
        "queries": len(queries),
        "reranker": args.scores or args.model,
        "k": K,
        "sets": {n: {k: round(float(np.mean(v)), 4) for k, v in m.items()} for n, m in per.items()},
    }
    Path(args.output).write_text(json.dumps(result, indent=1))
    for name, m in result["sets"].items():
        print(f"{name:>18} " + " ".join(f"{k}={v:.4f}" for k, v in m.items()))


if __name__ == "__main__":
    main()
