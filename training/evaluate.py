"""The evaluation protocol of docs/EVALUATION.md: NDCG@10, pair accuracy, RMSE, end-to-end.

One protocol for BM25, teachers and students. A *scorer* maps (query, product ids) to scores;
ranking is by score descending, ties by product id ascending.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Scorer = Callable[[str, Sequence[str]], np.ndarray]


def gain(relevance: np.ndarray) -> np.ndarray:
    """``2 ** (3 * (relevance - 1) / 2) - 1``: relevance 1 → 0, 3 → 7."""
    return 2.0 ** (3.0 * (np.asarray(relevance, dtype=np.float64) - 1.0) / 2.0) - 1.0


def _id_key(pid: str) -> tuple[int, int | str]:
    return (0, int(pid)) if pid.isdigit() else (1, pid)


def rank_order(scores: Sequence[float], ids: Sequence[str]) -> list[int]:
    """Indices by score descending, ties by product id ascending (numeric ids as numbers)."""
    return sorted(range(len(ids)), key=lambda i: (-float(scores[i]), _id_key(ids[i])))


def ndcg_at(
    ranked_relevance: Sequence[float], all_relevance: Sequence[float], k: int = 10
) -> float:
    g = gain(np.asarray(ranked_relevance[:k]))
    disc = 1.0 / np.log2(np.arange(2, len(g) + 2))
    ideal = np.sort(gain(np.asarray(all_relevance)))[::-1][:k]
    idcg = float((ideal * (1.0 / np.log2(np.arange(2, len(ideal) + 2)))).sum())
    return float((g * disc).sum()) / idcg if idcg > 0 else 0.0


def pair_accuracy(scores: np.ndarray, relevance: np.ndarray, min_diff: float = 0.5) -> float | None:
    """Fraction of judged pairs (relevance differing by ≥ min_diff) the scores order like the
    judges; a score tie counts 0.5. ``None`` when the query has no such pair."""
    total, right = 0, 0.0
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            d = relevance[i] - relevance[j]
            if abs(d) < min_diff - 1e-9:
                continue
            total += 1
            s = scores[i] - scores[j]
            right += 0.5 if s == 0 else float((s > 0) == (d > 0))
    return right / total if total else None


@dataclass(frozen=True)
class Judged:
    """Judged products per query: {query: (product ids, relevance array)}."""

    queries: dict[str, tuple[list[str], np.ndarray]]

    @classmethod
    def from_rows(cls, query: Sequence[str], product_id: Sequence[str], relevance: Sequence[float]):
        groups: dict[str, tuple[list[str], list[float]]] = {}
        for q, p, r in zip(query, product_id, relevance, strict=True):
            ids, rels = groups.setdefault(q, ([], []))
            ids.append(str(p))
            rels.append(float(r))
        return cls({q: (ids, np.asarray(rels)) for q, (ids, rels) in groups.items()})

    def evaluable(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Queries with at least 2 judged products whose relevance values are not all equal."""
        return {q: v for q, v in self.queries.items() if len(v[0]) >= 2 and np.ptp(v[1]) > 0}


@dataclass(frozen=True)
class Metrics:
    ndcg10: float
    pair_accuracy: float
    queries: int
    pair_queries: int
    rmse: float | None = None
    e2e_ndcg10: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def evaluate(
    judged: Judged,
    scorer: Scorer,
    *,
    activation: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: bool = False,
    per_query: dict[str, dict[str, float | None]] | None = None,
) -> Metrics:
    """Judged-candidate reranking metrics; RMSE too when ``activation`` turns the scorer's raw
    scores into P(relevant) (pointwise models). ``per_query``: filled with each evaluable
    query's ``ndcg10`` and ``pair_accuracy`` (None: no pair to order)."""
    from tqdm.auto import tqdm

    ndcgs, accs, sq = [], [], []
    items = judged.evaluable()
    for q, (ids, rel) in tqdm(items.items(), desc="evaluating", unit="query", disable=not progress):
        scores = np.asarray(scorer(q, ids), dtype=np.float64)
        order = rank_order(scores, ids)
        ndcgs.append(ndcg_at(rel[order], rel))
        acc = pair_accuracy(scores, rel)
        if acc is not None:
            accs.append(acc)
        if per_query is not None:
            per_query.setdefault(q, {}).update(ndcg10=ndcgs[-1], pair_accuracy=acc)
        if activation is not None:
            p = np.asarray(activation(scores), dtype=np.float64)
            sq.extend(((1.0 + 2.0 * p) - rel) ** 2)
    return Metrics(
        ndcg10=float(np.mean(ndcgs)),
        pair_accuracy=float(np.mean(accs)),
        queries=len(ndcgs),
        pair_queries=len(accs),
        rmse=float(np.sqrt(np.mean(sq))) if sq else None,
    )


def end_to_end_ndcg(
    judged: Judged,
    search: Callable[[str], Sequence[str]],
    *,
    progress: bool = False,
    per_query: dict[str, dict[str, float | None]] | None = None,
) -> float:
    """NDCG@10 of the *condensed* final list: ``search(query)`` returns the final ranked ids of
    the whole pipeline (top 100 retrieved, reranked); unjudged ids are removed. ``per_query``:
    filled with each query's ``e2e_ndcg10``."""
    from tqdm.auto import tqdm

    values = []
    items = judged.evaluable()
    for q, (ids, rel) in tqdm(items.items(), desc="end-to-end", unit="query", disable=not progress):
        rel_of = dict(zip(ids, rel, strict=True))
        condensed = [rel_of[p] for p in search(q) if p in rel_of]
        values.append(ndcg_at(condensed, rel))
        if per_query is not None:
            per_query.setdefault(q, {})["e2e_ndcg10"] = values[-1]
    return float(np.mean(values))


def score_lookup(path, column: str = "score") -> dict[tuple[str, str], float]:
    """{(query, product_id as text): score} of a score file's ``column``."""
    from reranker.training.data import read_pairs

    t = read_pairs(path, ("query", "product_id", column))
    q, p, s = (t.column(c).to_pylist() for c in ("query", "product_id", column))
    return {(a, str(b)): float(c) for a, b, c in zip(q, p, s, strict=True)}


def evaluate_scores(
    judged: Judged,
    path,
    column: str = "score",
    per_query: dict[str, dict[str, float | None]] | None = None,
) -> Metrics:
    """Judged-candidate metrics of precomputed scores (a logit per (query, product_id)); RMSE
    through the sigmoid. Every evaluable judged pair must be in the file."""
    from reranker.errors import DataError

    lookup = score_lookup(path, column)
    missing = [
        (q, p) for q, (ids, _) in judged.evaluable().items() for p in ids if (q, p) not in lookup
    ]
    if missing:
        raise DataError(f"{path} lacks {len(missing)} judged pairs, e.g. {missing[:2]}")
    return evaluate(
        judged,
        lambda q, ids: np.array([lookup[(q, p)] for p in ids]),
        activation=lambda raw: 1.0 / (1.0 + np.exp(-raw)),
        per_query=per_query,
    )


PER_QUERY_COLUMNS = ("ndcg10", "pair_accuracy", "e2e_ndcg10")


def write_per_query(path, per_query: dict[str, dict[str, float | None]]) -> None:
    """One row per evaluated query: ``query`` and :data:`PER_QUERY_COLUMNS` (null where not
    measured: no pair to order, no end to end), for a paired comparison of two systems
    (``python -m reranker.training.paired``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    queries = sorted(per_query)
    columns = {"query": pa.array(queries, pa.string())}
    for c in PER_QUERY_COLUMNS:
        columns[c] = pa.array([per_query[q].get(c) for q in queries], pa.float64())
    pq.write_table(pa.table(columns), path)


def load_judged(path) -> Judged:
    from reranker.training.data import read_pairs

    t = read_pairs(path, ("query", "product_id", "relevance"))
    return Judged.from_rows(
        t.column("query").to_pylist(),
        [str(p) for p in t.column("product_id").to_pylist()],
        t.column("relevance").to_pylist(),
    )


def evaluate_system(
    judged: Judged,
    index,
    *,
    model_dir: str | None = None,
    hf_model: str | None = None,
    fields: Sequence[str] | None = None,
    variant: str | None = None,
    precision: str = "fp32",
    e2e: bool = False,
    k: int = 100,
    progress: bool = True,
    per_query: dict[str, dict[str, float | None]] | None = None,
) -> Metrics:
    """BM25 (neither model given), a runtime model directory, or a Hugging Face model in torch;
    ``per_query`` as :func:`evaluate` and :func:`end_to_end_ndcg` fill it."""
    from reranker.errors import DataError

    row_of = {p: i for i, p in enumerate(index.ids)}
    unknown = {p for ids, _ in judged.queries.values() for p in ids if p not in row_of}
    if unknown:
        raise DataError(
            f"{len(unknown)} judged products are not in the index, e.g. {sorted(unknown)[:3]}"
        )

    def products(ids):
        return index.products_at([row_of[p] for p in ids])

    text_score: Callable[[str, list[str]], np.ndarray] | None = None
    if model_dir is not None:
        from reranker.models import open_model

        model = open_model(model_dir, variant=variant)
        model_fields = model.config.fields if fields is None else tuple(fields)
        activation = model._activate
        stored = index.tokens_for(model.token_key) if hasattr(model, "attach_store") else None
        if stored is not None and fields is None:  # a late student reads the index's states
            model.attach_store(stored, [p.text(model_fields) for p in products(index.ids)])

        def text_score(q, texts):
            return model.score(q, texts).raw

    elif hf_model is not None:
        from reranker.training.label import TorchScorer, _teacher_fields

        scorer = TorchScorer(hf_model, precision=precision)
        model_fields = _teacher_fields(Path(hf_model), "torch") if fields is None else tuple(fields)

        def activation(raw):
            return 1.0 / (1.0 + np.exp(-raw))

        def text_score(q, texts):
            return scorer([q] * len(texts), texts)

    if text_score is None:

        def score(q, ids):
            s = index.scores(q)
            return np.array([s[row_of[p]] for p in ids])

        activation = None
    else:

        def score(q, ids):
            return text_score(q, [p.text(model_fields) for p in products(ids)])

    metrics = evaluate(judged, score, activation=activation, progress=progress, per_query=per_query)
    if not e2e:
        return metrics

    def search(q):
        cands = index.retrieve(q, k)
        if text_score is None or not cands:
            return [c.product.id for c in cands]
        s = text_score(q, [c.product.text(model_fields) for c in cands])
        ids = [c.product.id for c in cands]
        return [ids[i] for i in rank_order(s, ids)]

    value = end_to_end_ndcg(judged, search, progress=progress, per_query=per_query)
    return Metrics(**{**metrics.to_dict(), "e2e_ndcg10": value})
