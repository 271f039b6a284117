"""A two-stage reranker: a cheap model scores every candidate, a better one rescores the best few.

A cascade directory holds only ``reranker.json``::

    {"format": "kd-reranker-cascade", "format_version": 1,
     "first": "../late", "second": "../cross", "second_k": 12, "metadata": {"name": ...}}

``first`` and ``second`` are model directories (paths relative to the cascade's own directory,
so a cascade can point at its siblings, as the shipped ``default`` profile does). Both must read
the same product text (the same ``fields``). For each query the first stage scores all the
candidates (a late student: from the states stored with the index, a few milliseconds for 100);
the ``second_k`` it ranks highest are rescored by the second stage (a full cross-encoder) and
ordered by it, above the others, which keep the first stage's order. Each result's probability is
that of the stage that placed it (each stage calibrated on its own). ``"second_k": null`` rescores
every candidate (the shipped ``accurate`` profile: the two students blended over all of them).

With ``first_weight`` *w* > 0 the rescored products are ordered by a blend of the two students,
``second raw + w * first raw`` (two students that err differently: the shipped default's
*w* = 0.25 was chosen on judged train pairs held out of all training), and with a
``calibration`` (``reranker calibrate`` of the cascade: Platt scaling of that blend) their
probability is ``sigmoid(scale * blend + bias)``.

Under a latency budget (``--budget-ms``, the service's deadline) the second stage shrinks first:
the first keeps every candidate while it fits, the second rescores as many of its best as the
rest of the budget allows (:meth:`CascadeLatency.split`).

``first_variant`` / ``second_variant`` name a stage's variant when the caller names none (the
shipped cascades: ``"first_variant": "int8"``, the late student's dynamic-int8 graph, where
the ``late`` profile alone computes its query in float32, ``int8-float-query``).

``reranker cascade FIRST SECOND --second-k 12|all [--first-weight 0.25] --output DIR`` writes one
(12: the shipped default's count, the largest within its 30 ms budget on a slow 2-core CPU).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reranker.catalog import Product
from reranker.crossencoder import CONFIG_FILE, Scores, sigmoid_probability
from reranker.errors import ModelError

FORMAT = "kd-reranker-cascade"
#: The stages take turns on the same cores: an idle stage's threads must not spin (with spinning
#: on, the second stage ran at half speed right after the first).
NO_SPINNING = {"session.intra_op.allow_spinning": "0"}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CascadeConfig:
    first: str
    second: str
    #: how many of the first stage's best the second rescores; ``None``: every candidate (the
    #: second stage's order over all of them, blended with the first's when ``first_weight``)
    second_k: int | None = 12
    #: the rescored products' score: second raw + first_weight * first raw
    first_weight: float = 0.0
    #: Platt scaling of the rescored products' score (``scale``, ``bias``); empty: the
    #: second stage's own probability
    calibration: dict = field(default_factory=dict)
    #: each stage's variant when the caller names none (``None``: the stage's own default);
    #: e.g. ``int8`` for a late first stage, whose own default (``int8-float-query``) costs
    #: 1.6–3.0 ms more per query on an AVX2 CPU
    first_variant: str | None = None
    second_variant: str | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    metadata: dict = field(default_factory=dict)

    @classmethod
    def read(cls, model_dir: Path) -> CascadeConfig:
        path = Path(model_dir) / CONFIG_FILE
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {path}: {exc}") from None
        if not is_cascade(raw):
            raise ModelError(f"{path} is not a cascade config (format {FORMAT!r})")
        if raw.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"{path} has cascade format version {raw.get('format_version')}")
        try:
            cfg = cls(**raw)
        except TypeError as exc:
            raise ModelError(f"{path} has unexpected settings: {exc}") from None
        if cfg.second_k is not None and not _positive_int(cfg.second_k):
            raise ModelError(
                f"{path}: second_k must be a positive integer or null (all), not {cfg.second_k!r}"
            )
        if not isinstance(cfg.first_weight, int | float) or cfg.first_weight < 0:
            raise ModelError(f"{path}: first_weight must be a number ≥ 0, not {cfg.first_weight!r}")
        if cfg.calibration and not all(
            isinstance(cfg.calibration.get(k), int | float) for k in ("scale", "bias")
        ):
            raise ModelError(f"{path}: calibration needs numeric 'scale' and 'bias'")
        return cfg


def split_best(first_raw: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first stage's best ``k`` (rescored) and of the rest, each in its order."""
    order = np.argsort(-first_raw, kind="stable")
    return order[:k], order[k:]


def place_rescored(
    first_raw: np.ndarray, head: np.ndarray, rest: np.ndarray, rescored: np.ndarray
) -> np.ndarray:
    """Every candidate's raw score in the cascade's order: the rescored ``head`` keep
    ``rescored``; the ``rest`` go below every one of them, in the first stage's order."""
    raw = np.empty(len(first_raw), dtype=np.float32)
    raw[head] = rescored
    if len(rest):
        tail = first_raw[rest].astype(np.float64)
        raw[rest] = float(rescored.min()) - 1.0 - (tail.max() - tail)
    return raw


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def is_cascade(raw: object) -> bool:
    return isinstance(raw, dict) and raw.get("format") == FORMAT


def write_cascade(
    output: str | Path,
    first: str | Path,
    second: str | Path,
    second_k: int | None,
    name: str | None,
    first_weight: float = 0.0,
    first_variant: str | None = None,
) -> Path:
    """A cascade directory at ``output`` over two model directories (stored relative to it);
    ``second_k`` ``None``: the second stage rescores every candidate; ``first_variant``: the
    first stage's variant (``None``: its default, except a late student's ``int8-float-query``,
    for which its ``int8`` graph is chosen: in a cascade the first stage only picks and weighs
    what the second rescores, and there the float query measured no better, at 1.6–3.0 ms more
    on an AVX2 CPU; ``training/REPORT.md``, sixteenth and twentieth sessions)."""
    from reranker.late import FLOAT_QUERY

    if first_variant is None:
        raw = _json(Path(first) / CONFIG_FILE)
        if isinstance(raw, dict) and raw.get("default_variant") == FLOAT_QUERY:
            first_variant = "int8" if "int8" in raw.get("files", {}) else None
    out = Path(output)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)

    def rel(p: str | Path) -> str:
        return os.path.relpath(Path(p).resolve(), out.resolve())

    cfg = CascadeConfig(
        first=rel(first),
        second=rel(second),
        second_k=second_k,
        first_weight=float(first_weight),
        first_variant=first_variant,
        metadata={"name": name or out.name},
    )
    path = out / CONFIG_FILE
    path.write_text(json.dumps(asdict(cfg), indent=2, sort_keys=True))
    try:
        CascadeReranker(out)  # it loads: both stages exist and read the same text
    except Exception:
        path.unlink()
        if created:
            out.rmdir()  # nothing is left of a refused cascade
        raise
    return out


class CascadeReranker:
    """The first stage on every candidate, the second on the first's best ``second_k``.

    It answers like a :class:`reranker.CrossEncoder` (``score``, ``score_pairs``,
    ``score_products``, ``calibrate_latency``); what an index stores for it is its first stage's
    (``token_key``, ``build_store``, ``attach_store``), and ``config`` is the first stage's.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        variant: str | None = None,
        second_k: int | None = None,
        **kwargs,
    ) -> None:
        """``second_k``: how many the second stage rescores, instead of the config's (a
        deployment's choice, e.g. fewer on a slower CPU; the ranking of those it rescores is the
        config's blend)."""
        from reranker.models import open_model

        self.model_dir = Path(model_dir)
        self.cascade = CascadeConfig.read(self.model_dir)
        if second_k is not None and not _positive_int(second_k):
            raise ModelError(f"second_k must be a positive integer, not {second_k!r}")
        self.second_k = self.cascade.second_k if second_k is None else second_k
        self.first_weight = float(self.cascade.first_weight)
        stages = []
        for which in ("first", "second"):
            path = (self.model_dir / getattr(self.cascade, which)).resolve()
            if not path.is_dir():
                raise ModelError(f"{self.model_dir}: its {which} stage {path} is not a directory")
            if (path / CONFIG_FILE).is_file() and is_cascade(_json(path / CONFIG_FILE)):
                raise ModelError(f"{self.model_dir}: its {which} stage is itself a cascade")
            own = getattr(self.cascade, f"{which}_variant")
            stage = open_model(
                path,
                variant=_variant(path, variant) or own,
                session_config=NO_SPINNING,
                **kwargs,
            )
            stages.append(stage)
        self.first, self.second = stages
        if tuple(self.first.config.fields) != tuple(self.second.config.fields):
            raise ModelError(
                f"{self.model_dir}: the stages read different product fields "
                f"({self.first.config.fields} and {self.second.config.fields})"
            )
        self.config = self.first.config
        self.token_key = self.first.token_key
        self.variant = self.first.variant
        self.latency = CascadeLatency(self)
        self.last_timings: dict[str, float] = {}

    @property
    def name(self) -> str:
        return str(self.cascade.metadata.get("name") or self.model_dir.name)

    # what an index stores for it, and what the service asks of it: the first stage's
    def query_ids(self, query: str) -> np.ndarray:
        return self.first.query_ids(query)

    def build_store(self, texts: Sequence[str], progress: bool = False):
        return self.first.build_store(texts, progress=progress)

    def attach_store(self, store, texts: Sequence[str]) -> int:
        if not hasattr(self.first, "attach_store"):
            return 0
        return self.first.attach_store(store, texts)

    def __getattr__(self, name: str):  # stored_hits, encoded_texts: the first stage's counters
        if name in ("stored_hits", "encoded_texts") and "first" in self.__dict__:
            return getattr(self.first, name)
        raise AttributeError(name)

    # scoring; ``second_k`` (at most the config's): how many the second stage rescores this time
    # (a latency budget's choice, :meth:`CascadeLatency.split`); 0 leaves the first stage's order
    def score(self, query: str, texts: Sequence[str], *, second_k: int | None = None) -> Scores:
        t0 = time.perf_counter()
        first = self.first.score(query, texts)
        return self._second(query, list(texts), first, t0, second_k)

    def score_products(
        self,
        query: str,
        products: Sequence[Product],
        token_ids: Sequence[np.ndarray] | None = None,
        *,
        second_k: int | None = None,
    ) -> Scores:
        """``token_ids``: the first stage's stored forms of the products (an index's, same
        ``token_key``); the second stage reads the products' text."""
        t0 = time.perf_counter()
        first = self.first.score_products(query, products, token_ids)
        texts = [p.text(self.config.fields) for p in products]
        return self._second(query, texts, first, t0, second_k)

    def score_pairs(
        self, queries: Sequence[str], texts: Sequence[str], *, second_k: int | None = None
    ) -> Scores:
        """Pairs of several queries (the service's batches): the cascade runs per query."""
        if len(queries) != len(texts):
            raise ValueError(f"{len(queries)} queries but {len(texts)} texts")
        raw = np.zeros(len(texts), dtype=np.float32)
        probability = np.zeros(len(texts), dtype=np.float32)
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q, []).append(i)
        for q, rows in groups.items():
            s = self.score(q, [texts[i] for i in rows], second_k=second_k)
            raw[rows], probability[rows] = s.raw, s.probability
        return Scores(raw, probability)

    def _second(
        self, query: str, texts: list[str], first: Scores, t0: float, second_k: int | None
    ) -> Scores:
        n = len(texts)
        t1 = time.perf_counter()
        k2 = self.rescored(n, second_k)
        if k2 == 0:
            self.last_timings = {"first_ms": (t1 - t0) * 1e3, "second_ms": 0.0}
            return first
        head, rest = split_best(first.raw, k2)
        second = self.second.score(query, [texts[i] for i in head])
        blend = second.raw
        if self.first_weight:
            blend = second.raw + self.first_weight * first.raw[head]
        raw = place_rescored(first.raw, head, rest, blend)
        probability = np.empty(n, dtype=np.float32)
        calibrated = bool(self.cascade.calibration)
        probability[head] = self._activate(blend) if calibrated else second.probability
        probability[rest] = first.probability[rest]
        t2 = time.perf_counter()
        self.last_timings = {"first_ms": (t1 - t0) * 1e3, "second_ms": (t2 - t1) * 1e3}
        return Scores(raw, probability)

    def rescored(self, n: int, second_k: int | None = None) -> int:
        """How many of ``n`` candidates the second stage rescores: ``second_k`` (a budget's
        count), never more than the config's (all ``n`` when the config's is ``None``)."""
        cap = n if self.second_k is None else min(n, self.second_k)
        return cap if second_k is None else max(0, min(int(second_k), cap))

    def _activate(self, raw: np.ndarray) -> np.ndarray:
        """The probability of a rescored product's raw score: the cascade's calibration, else
        the second stage's (the rest get the first stage's in :meth:`score`)."""
        if self.cascade.calibration:
            return sigmoid_probability(raw, self.cascade.calibration)
        return self.second._activate(raw)

    def calibrate_latency(self) -> CascadeLatency:
        """Each stage's cost model (timed on its own typical input, once), combined."""
        self.first.calibrate_latency()
        self.second.calibrate_latency()
        return self.latency


class CascadeLatency:
    """The cost of a cascade call of ``n`` pairs: the first stage on ``n``, the second on
    ``min(n, second_k)``, each from its stage's own :class:`LatencyModel` (which its calls keep
    current). Answers like a :class:`LatencyModel` (``predict_ms``, ``k_for``); ``split`` says how
    a budget divides between the stages."""

    def __init__(self, cascade: CascadeReranker) -> None:
        self.cascade = cascade

    @property
    def calibrated(self) -> bool:
        return self.cascade.first.latency.calibrated and self.cascade.second.latency.calibrated

    def predict_ms(self, pairs: int) -> float:
        c = self.cascade
        if pairs <= 0:
            return 0.0
        return c.first.latency.predict_ms(pairs) + c.second.latency.predict_ms(c.rescored(pairs))

    def split(self, budget_ms: float, k_max: int) -> tuple[int, int]:
        """What fits ``budget_ms`` out of ``k_max`` candidates: ``(n, m)``, the first stage on
        the top ``n``, the second on the first's best ``m`` (≤ ``second_k``). The cheap first
        stage keeps every candidate as long as it fits; the budget shrinks the second stage
        first (a tighter budget would otherwise leave most candidates in first-stage order
        to keep the costly rescoring of a few)."""
        c = self.cascade
        k_max = max(k_max, 0)
        first = c.first.latency
        if not k_max or first.predict_ms(k_max) > budget_ms:
            return first.k_for(budget_ms, k_max), 0
        left = budget_ms - first.predict_ms(k_max)
        return k_max, c.second.latency.k_for(left, c.rescored(k_max))

    def k_for(self, budget_ms: float, k_max: int) -> int:
        """The most candidates (≤ ``k_max``) scored within ``budget_ms`` (:meth:`split`)."""
        return self.split(budget_ms, k_max)[0]


def rescored_count(model, scored: int, second_k: int | None = None) -> int | None:
    """How many of the ``scored`` candidates a cascade's second stage rescores (``second_k``: a
    budget's count); None for a model that is not a cascade."""
    if not isinstance(model, CascadeReranker):
        return None
    return model.rescored(scored, second_k)


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _variant(path: Path, variant: str | None) -> str | None:
    """``variant`` where the stage has it (e.g. int8), else the stage's own default."""
    raw = _json(path / CONFIG_FILE)
    files = raw.get("files", {}) if isinstance(raw, dict) else {}
    return variant if variant in files else None


__all__ = ["CascadeConfig", "CascadeReranker", "is_cascade", "rescored_count", "write_cascade"]
