"""BM25's k1 and b (and the dense half's weight) for the embedded hybrid first stage, on train
queries: which products reach the reranker with each.

    python -m reranker.training.first_stage_bm25 --index-dir INDEX \\
        --catalog demo/products.parquet \\
        --judged holdout=ST/train_holdout.parquet \\
        --judged train1500=../shared/data/homedepot/train.parquet:1500 \\
        --judged dev=../shared/data/homedepot/dev.parquet \\
        --k1 0.2,0.3,0.5,0.9,1.5 --b 0.15,0.4,0.75 \\
        --scores training/results/teacher/scores_train.parquet \\
        --output training/results/first_stage_bm25.json

``INDEX`` is a hybrid index built by ``reranker index`` (its tokenizer, spelling correction and
dense vectors are reused; BM25 is rebuilt in memory for each (k1, b)). ``NAME=FILE:N`` draws N of
the file's evaluable queries (seed 0), leaving out the queries of every other ``--judged`` file
(so a train draw never holds a held-out query). For each point and query set, the measures of
``python -m reranker.training.first_stage`` over the hybrid top 100: recall, gain_recall,
oracle_e2e (the ceiling of any reranker), first_stage_e2e and, with ``--scores`` (e.g. the
teacher's of train pairs), reranked_e2e (in that score's order: a stand-in reranker). Choose on
train queries; dev only reports (training/REPORT.md, eighteenth session).
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

from reranker.catalog import read_catalog
from reranker.index import BM25Index
from reranker.training.evaluate import load_judged
from reranker.training.first_stage import candidate_measures


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def query_sets(specs: list[str]) -> dict[str, tuple[dict, list[str]]]:
    """``NAME=FILE[:N]`` → (judged, queries): N drawn with seed 0 from the evaluable queries not
    in any other set's file."""
    parsed = []
    for spec in specs:
        name, _, rest = spec.partition("=")
        path, _, n = rest.partition(":") if not Path(rest).exists() else (rest, "", "")
        parsed.append((name, path, int(n) if n else None))
    judged = {name: load_judged(path).evaluable() for name, path, _ in parsed}
    out = {}
    for name, _, n in parsed:
        queries = sorted(judged[name])
        if n:
            others = set().union(*(set(judged[o]) for o in judged if o != name))
            pool = [q for q in queries if q not in others]
            queries = sorted(np.random.default_rng(0).choice(pool, n, replace=False).tolist())
        out[name] = (judged[name], queries)
    return out


def measure(index: BM25Index, sets, score_of: dict | None) -> dict:
    """Mean :func:`~reranker.training.first_stage.candidate_measures` of the index's top 100 over
    each set's queries (reranked_e2e where ``score_of`` scores every judged pair of the query)."""
    result = {}
    for name, (judged, queries) in sets.items():
        m: dict[str, list[float]] = {}
        for q in queries:
            ids, rel = judged[q]
            order = [c.product.id for c in index.retrieve(q, 100)]
            scored = score_of is not None and all((q, p) in score_of for p in ids)
            score = (lambda p, q=q: score_of[(q, p)]) if scored else None
            for k, v in candidate_measures(order, ids, rel, score).items():
                m.setdefault(k, []).append(v)
        result[name] = {k: round(float(np.mean(v)), 4) for k, v in m.items()}
    return result


def main() -> None:
    from reranker.training.data import read_pairs

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index-dir", required=True)
    ap.add_argument("--catalog", required=True, help="The catalog the index was built from.")
    ap.add_argument("--judged", action="append", required=True, help="NAME=FILE[:N]")
    ap.add_argument("--k1", default="0.3")
    ap.add_argument("--b", default="0.4")
    ap.add_argument("--weight", default=None, help="Dense weights (default: the index's).")
    ap.add_argument("--scores", help="Score file with a logit per judged train pair.")
    ap.add_argument("--output", required=True)
    args = ap.parse_args()

    hybrid = BM25Index.load(args.index_dir)
    if hybrid.dense is None:
        raise SystemExit(f"{args.index_dir}: build it with `reranker index` (dense)")
    dense = hybrid.dense
    dense.similarities = functools.lru_cache(maxsize=None)(dense.similarities)  # once a query
    catalog = read_catalog(args.catalog)
    sets = query_sets(args.judged)
    score_of = None
    if args.scores:
        t = read_pairs(args.scores, ("query", "product_id", "score")).to_pydict()
        score_of = {
            (q, str(p)): float(s)
            for q, p, s in zip(t["query"], t["product_id"], t["score"], strict=True)
        }
    weights = _floats(args.weight) if args.weight else [dense.weight]
    points = {}
    for k1 in _floats(args.k1):
        for b in _floats(args.b):
            index = BM25Index.build(catalog, tokenizer=hybrid.tokenizer, k1=k1, b=b)
            if index.ids != hybrid.ids:
                raise SystemExit(f"{args.catalog} is not the catalog of {args.index_dir}")
            index.dense = dense
            for w in weights:
                dense.weight = w
                points[f"k1={k1},b={b},w={w}"] = r = measure(index, sets, score_of)
                print(f"k1={k1} b={b} w={w}", json.dumps(r), flush=True)
    Path(args.output).write_text(
        json.dumps({"judged": args.judged, "k": 100, "points": points}, indent=1)
    )


if __name__ == "__main__":
    main()
