"""A teacher ensemble: members' raw logits combined in logit space.

``score = scale * sum_i(w_i * logit_i) + bias``, with the weights ``w`` (on the simplex, a grid
of ``step``) chosen for pair accuracy (ties: NDCG@10, then log-loss) on judged pairs held out
from every member's training, never on dev; then ``scale`` and ``bias`` fitted on the same pairs
by binary cross-entropy against the soft targets, so that ``sigmoid(score)`` is a calibrated
probability. Members' scores come from ``reranker label`` files (one per member, same pairs).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reranker.errors import DataError
from reranker.training.calibrate import fit_platt
from reranker.training.data import read_pairs, soft_targets
from reranker.training.evaluate import Judged, evaluate

KEY = ("query", "product_id")


@dataclass(frozen=True)
class Ensemble:
    members: list[str]
    weights: list[float]
    scale: float
    bias: float
    holdout: dict  # metrics on the held-out pairs: per member and the ensemble

    def combine(self, logits: Mapping[str, np.ndarray]) -> np.ndarray:
        s = sum(
            w * np.asarray(logits[m], dtype=np.float64)
            for m, w in zip(self.members, self.weights, strict=True)
        )
        return (self.scale * s + self.bias).astype(np.float32)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Ensemble:
        return cls(**json.loads(Path(path).read_text()))


def member_scores(files: Mapping[str, str | Path]) -> pa.Table:
    """The members' label files joined on (query, product_id): the first file's columns (score
    renamed ``score_<member>``) plus each other member's score; they must hold the same pairs."""
    base: pa.Table | None = None
    keys: list[tuple[str, str]] | None = None
    for name, path in files.items():
        t = read_pairs(path, (*KEY, "score"))
        k = list(
            zip(
                t.column("query").to_pylist(),
                map(str, t.column("product_id").to_pylist()),
                strict=True,
            )
        )
        if base is None:
            i = t.column_names.index("score")
            base, keys = (
                t.rename_columns([*t.column_names[:i], f"score_{name}", *t.column_names[i + 1 :]]),
                k,
            )
            continue
        if k != keys:
            if sorted(k) != sorted(keys):
                raise DataError(
                    f"{path} does not hold the same (query, product_id) pairs as the first member"
                )
            pos = {p: j for j, p in enumerate(k)}
            t = t.take(pa.array([pos[p] for p in keys]))
        base = base.append_column(f"score_{name}", t.column("score"))
    if base is None:
        raise DataError("an ensemble needs at least one member")
    return base


def _judged_metrics(
    queries: Sequence[str], pids: Sequence[str], rel: np.ndarray, scores: np.ndarray
):
    judged = Judged.from_rows(queries, pids, rel)
    lookup = {(q, p): s for q, p, s in zip(queries, pids, scores, strict=True)}
    m = evaluate(judged, lambda q, ids: np.array([lookup[(q, p)] for p in ids]))
    return m.pair_accuracy, m.ndcg10


def _bce(logit: np.ndarray, target: np.ndarray) -> float:
    z = np.clip(logit, -30, 30)
    return float(np.mean(np.logaddexp(0, z) - target * z))


def fit(
    table: pa.Table,
    members: Sequence[str],
    *,
    step: float = 0.05,
    relevance_range: tuple[float, float] = (1.0, 3.0),
) -> Ensemble:
    """Weights, scale and bias on ``table``: held-out judged pairs with ``relevance`` and each
    member's ``score_<member>``."""
    if "relevance" not in table.column_names:
        raise DataError("the held-out pairs need a relevance column")
    queries = table.column("query").to_pylist()
    pids = [str(p) for p in table.column("product_id").to_pylist()]
    rel = np.asarray(table.column("relevance").to_pylist(), dtype=np.float64)
    target = soft_targets(rel, *relevance_range).astype(np.float64)
    logits = {
        m: np.asarray(table.column(f"score_{m}").to_pylist(), dtype=np.float64) for m in members
    }
    per_member = {}
    for m in members:
        acc, ndcg = _judged_metrics(queries, pids, rel, logits[m])
        per_member[m] = {"pair_accuracy": acc, "ndcg10": ndcg, "log_loss": _bce(logits[m], target)}
    n = round(1 / step)
    best = None
    for parts in itertools.product(range(n + 1), repeat=len(members) - 1):
        if sum(parts) > n:
            continue
        w = np.array([*parts, n - sum(parts)], dtype=np.float64) / n
        s = sum(wi * logits[m] for wi, m in zip(w, members, strict=True))
        acc, ndcg = _judged_metrics(queries, pids, rel, s)
        key = (round(acc, 6), round(ndcg, 6), -_bce(s, target))
        if best is None or key > best[0]:
            best = (key, w, s)
    _, w, s = best
    scale, bias = fit_platt(s, target)
    acc, ndcg = _judged_metrics(queries, pids, rel, s)
    per_member["ensemble"] = {
        "pair_accuracy": acc,
        "ndcg10": ndcg,
        "log_loss": _bce(scale * s + bias, target),
    }
    per_member["pairs"] = len(queries)
    per_member["queries"] = len(set(queries))
    return Ensemble(list(members), [float(x) for x in w], float(scale), float(bias), per_member)


def write_scores(table: pa.Table, ensemble: Ensemble, output: str | Path) -> Path:
    """``table`` (joined member scores) plus the ensemble's ``score``, as zstd Parquet."""
    logits = {m: table.column(f"score_{m}").to_numpy() for m in ensemble.members}
    out = table.append_column("score", pa.array(ensemble.combine(logits), pa.float32()))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    pq.write_table(out, tmp, compression="zstd")
    tmp.replace(output)
    return output
