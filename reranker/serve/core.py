"""The scoring core every wire dialect translates to: settings, metrics, the model's worker
thread (micro-batching) and :class:`Scoring`, which ranks a query's documents within a deadline.

One worker thread owns the model. Requests arriving together are scored in one batch while the
event loop only waits. Each request has a deadline: if the model cannot answer in time, or fails,
the answer is the order given with ``reranked`` false and a reason, never a 5xx.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reranker._extras import require

require("fastapi", "serve")
require("prometheus_client", "serve")

from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from reranker.cascade import rescored_count  # noqa: E402
from reranker.text import product_text  # noqa: E402


@dataclass(frozen=True)
class ServiceSettings:
    """Limits and timing of the service; every limit is named in the error it causes."""

    deadline_ms: float = 500.0
    max_documents: int = 1000
    max_field_chars: int = 4096
    max_query_chars: int = 1024
    max_body_bytes: int = 4_000_000
    max_batch_pairs: int = 512
    batch_wait_ms: float = 2.0
    k: int = 100
    n: int = 10
    #: Rerank only as many candidates as the model's learnt cost says fit in what is left of the
    #: deadline (the rest keep first-stage order); off: all or nothing (deadline fallback).
    adaptive: bool = True


# --------------------------------------------------------------------------------- metrics
@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("kd_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.stage = Histogram(
            "kd_stage_seconds",
            "Time per stage",
            ["stage"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.batch_pairs = Histogram(
            "kd_batch_pairs",
            "(query, document) pairs per model batch",
            registry=r,
            buckets=(1, 10, 50, 100, 200, 400, 800, 1600),
        )
        self.batch_requests = Histogram(
            "kd_batch_requests",
            "Requests per model batch",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32),
        )
        self.fallbacks = Counter(
            "kd_fallbacks", "Answers in first-stage order", ["reason"], registry=r
        )
        self.dialect_requests = Counter(
            "kd_dialect_requests",
            "Rerank requests by wire dialect (native, cohere-v1, cohere-v2, tei)",
            ["dialect"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "kd_model_loaded", "1 when a reranker model is loaded", registry=r
        )
        self.model_load_seconds = Gauge(
            "kd_model_load_seconds", "Time to load the model", registry=r
        )
        self.product_texts = Gauge(
            "kd_product_texts",
            "Product texts a late student served from stored states or encoded at query time",
            ["source"],
            registry=r,
        )


# --------------------------------------------------------------------------------- batching
class DeadlineExceeded(Exception):
    pass


@dataclass
class _Job:
    queries: list[str]
    texts: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False
    ids: tuple[np.ndarray, list[np.ndarray]] | None = None  # (query ids, stored product ids)
    second_k: int | None = None  # a cascade's second stage, cut by the deadline (None: all)

    @property
    def pairs(self) -> int:
        return len(self.ids[1]) if self.ids is not None else len(self.texts)


class Batcher:
    """Owns the model in one worker thread and scores concurrent requests together."""

    def __init__(
        self, model, metrics: Metrics, *, max_batch_pairs: int = 512, wait_ms: float = 2.0
    ):
        self.model = model
        self.metrics = metrics
        self.max_batch_pairs = max_batch_pairs
        self.wait_s = wait_ms / 1e3
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self.pending_pairs = 0  # submitted and not yet scored (for the adaptive k)
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kd-reranker-model", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _add_pending(self, n: int) -> None:
        with self._pending_lock:
            self.pending_pairs += n

    def pending_ms(self) -> float:
        """Predicted time to score what is already queued."""
        latency = getattr(self.model, "latency", None)
        return latency.predict_ms(self.pending_pairs) if latency and self.pending_pairs else 0.0

    async def score(
        self,
        queries: list[str],
        texts: list[str],
        timeout_s: float,
        ids: tuple[np.ndarray, list[np.ndarray]] | None = None,
        second_k: int | None = None,
    ) -> np.ndarray:
        """Scores as a (2, pairs) array, raw scores then the model's probabilities, or
        DeadlineExceeded after ``timeout_s``; model errors propagate. ``ids``: the query's and
        the products' token ids (stored with the index) instead of texts. ``second_k``: how
        many a cascade's second stage rescores (its own count when None)."""
        loop = asyncio.get_running_loop()
        job = _Job(queries, texts, loop.create_future(), loop, ids=ids, second_k=second_k)
        self._add_pending(job.pairs)
        self._queue.put(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), max(timeout_s, 0.0))
        except asyncio.TimeoutError:
            job.cancelled = True  # the worker skips it if it has not started yet
            raise DeadlineExceeded from None

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            pairs = job.pairs
            end = time.monotonic() + self.wait_s
            while pairs < self.max_batch_pairs:
                remaining = end - time.monotonic()
                try:
                    nxt = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
                pairs += nxt.pairs
            skipped = [j for j in batch if j.cancelled]
            batch = [j for j in batch if not j.cancelled]
            self._add_pending(-sum(j.pairs for j in skipped))
            if not batch:
                continue
            self.metrics.batch_pairs.observe(sum(j.pairs for j in batch))
            self.metrics.batch_requests.observe(len(batch))
            try:
                raw = self._score(batch)
            except Exception as exc:  # a failing model must not kill the worker
                for j in batch:
                    j.loop.call_soon_threadsafe(_set_exception, j.future, exc)
                continue
            finally:
                self._add_pending(-sum(j.pairs for j in batch))
            start = 0
            for j in batch:
                part = raw[:, start : start + j.pairs]
                start += j.pairs
                j.loop.call_soon_threadsafe(_set_result, j.future, part)

    def _score(self, batch: list[_Job]) -> np.ndarray:
        """Raw scores and probabilities, stacked: the model's own probabilities (a cascade's
        depend on which stage placed a product, not on the raw score alone)."""
        if not hasattr(self.model, "score_ids"):  # any object with score_pairs will do
            # a cascade under an adaptive deadline: each request with its own second-stage
            # count (a cascade scores query by query anyway, so nothing is lost)
            if any(j.second_k is not None for j in batch):
                parts = [
                    self.model.score_pairs(j.queries, j.texts, second_k=j.second_k) for j in batch
                ]
                return np.concatenate([np.stack([s.raw, s.probability]) for s in parts], axis=1)
            queries = [q for j in batch for q in j.queries]
            s = self.model.score_pairs(queries, [t for j in batch for t in j.texts])
            return np.stack([s.raw, s.probability])
        qids: list[np.ndarray] = []
        pids: list[np.ndarray] = []
        for j in batch:
            if j.ids is not None:
                qids += [j.ids[0]] * len(j.ids[1])
                pids += j.ids[1]
            else:  # tokenised here, in the worker thread, not on the event loop
                cache = {q: self.model.query_ids(q) for q in dict.fromkeys(j.queries)}
                qids += [cache[q] for q in j.queries]
                pids += self.model.product_inputs(j.texts)
        s = self.model.score_ids(qids, pids)
        return np.stack([s.raw, s.probability])


def _set_result(fut: asyncio.Future, value) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


# --------------------------------------------------------------------------------- errors
class ApiError(Exception):
    """A request the service refuses; each dialect renders it in its own error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def validation_message(exc) -> str:
    """The first problem of a pydantic ``ValidationError`` as one line: ``where: what``."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"{where}: {first.get('msg', 'invalid')}"


def check_query(text: str, settings: ServiceSettings) -> str:
    if not text.strip():
        raise ApiError(422, "query is empty")
    if len(text) > settings.max_query_chars:
        raise ApiError(
            422,
            f"query has {len(text)} characters; "
            f"the limit is max_query_chars={settings.max_query_chars}",
        )
    return text


def check_count(count: int, settings: ServiceSettings, what: str = "documents") -> None:
    if count > settings.max_documents:
        raise ApiError(413, f"{count} {what}; the limit is max_documents={settings.max_documents}")


def document_text(
    i: int,
    doc: str | dict[str, Any],
    fields: Sequence[str],
    limit: int,
    *,
    where: str = "documents",
    rank_fields: Sequence[str] | None = None,
) -> str:
    """The model text of one document: a string as it is; an object's ``text``, or its
    ``title`` and catalog fields through the model's own product-text template. ``rank_fields``
    (Cohere v1) names the keys to read, in order: ``title`` first if named, else the values
    joined as ``key: value``."""
    if isinstance(doc, str):
        values: dict[str, Any] = {"document": doc}
    else:
        values = {k: v for k, v in doc.items() if k != "id"}
        if rank_fields:
            missing = [f for f in rank_fields if f not in values]
            if missing:
                raise ApiError(422, f"{where}[{i}] lacks rank field(s) {', '.join(missing)}")
            values = {f: values[f] for f in rank_fields}
        elif not values.get("text") and not values.get("title"):
            raise ApiError(422, f"{where}[{i}] needs a 'text' or a 'title'")
        for k, v in values.items():
            if v is not None and not isinstance(v, str | int | float):
                raise ApiError(422, f"{where}[{i}].{k} must be a string or a number")
    for k, v in values.items():
        if isinstance(v, str) and len(v) > limit:
            raise ApiError(
                413,
                f"{where}[{i}].{k} has {len(v)} characters; the limit is max_field_chars={limit}",
            )
    if isinstance(doc, str):
        return doc
    if rank_fields and "title" not in rank_fields and "text" not in rank_fields:
        return " | ".join(f"{k}: {v}" for k, v in values.items() if v is not None)
    if values.get("text"):
        return str(values["text"])
    attrs = {k: None if v is None else str(v) for k, v in values.items() if k != "title"}
    return product_text(str(values["title"]), attrs, fields)


# --------------------------------------------------------------------------------- scoring core
@dataclass
class Ranking:
    """A query's documents ranked: ``order`` lists indexes into what was given (best first);
    ``raw`` and ``probability`` hold the model's scores for the first ``scored`` documents
    (None when not reranked); the rest keep the order given."""

    order: list[int]
    raw: np.ndarray | None
    probability: np.ndarray | None
    scored: int
    reason: str | None
    seconds: float
    #: a cascade: how many of the scored its second stage rescored (None: a single model)
    rescored: int | None = None

    @property
    def reranked(self) -> bool:
        return self.raw is not None

    def ordering_scores(self, raw: bool = False) -> list[float]:
        """A score for every document, in the order given, that sorts like ``order``: the
        model's (probability, or raw logit) for the scored ones, and for the others values
        below all of those that keep the order given. Clients that need a score for every
        document (OpenSearch's rerank processor, Cohere and TEI clients) get one."""
        n = len(self.order)
        out = [0.0] * n
        if self.raw is not None:
            src = self.raw if raw else self.probability
            for i in range(self.scored):
                out[i] = float(src[i])
        rest = n - (self.scored if self.raw is not None else 0)
        if rest:
            start = n - rest
            if self.raw is not None and self.scored:
                low = min(out[:start])  # strictly below every model score, in the order given
                gap = 1.0 if raw else low / (rest + 1)
                for j in range(rest):
                    out[start + j] = low - gap * (j + 1)
            else:
                for j in range(rest):
                    out[start + j] = (rest - j) / (rest + 1)
        return out


class Scoring:
    """The one scoring core: the model behind its worker, the deadline and the adaptive k."""

    def __init__(self, model, batcher, metrics: Metrics, settings: ServiceSettings) -> None:
        self.model = model
        self.batcher = batcher
        self.metrics = metrics
        self.settings = settings
        self.model_name = getattr(model, "name", None) if model is not None else None
        self.fields = tuple(getattr(getattr(model, "config", None), "fields", ()) or ())
        self.latency = getattr(model, "latency", None) if settings.adaptive else None
        if self.latency is not None and hasattr(model, "calibrate_latency"):
            model.calibrate_latency()  # before the first request, so k fits from the start

    def fitting(self, count: int, deadline_ms: float | None, t0: float) -> tuple[int, int | None]:
        """How many of ``count`` candidates the model can score before the deadline, given
        what is queued ahead (all of them when the service is not adaptive), and for a cascade
        how many its second stage can rescore (None: as configured)."""
        if self.latency is None or self.batcher is None:
            return count, None
        left = (deadline_ms or self.settings.deadline_ms) - (time.perf_counter() - t0) * 1e3
        return self.latency.split(0.8 * left - self.batcher.pending_ms(), count)

    async def scores(
        self, queries, texts, deadline_ms, t0, ids=None, second_k=None
    ) -> tuple[np.ndarray | None, str | None]:
        metrics, settings = self.metrics, self.settings
        if self.batcher is None:
            metrics.fallbacks.labels("no_model").inc()
            return None, "no model is loaded"
        if not (len(ids[1]) if ids is not None else len(texts)):
            metrics.fallbacks.labels("deadline").inc()
            limit = deadline_ms or settings.deadline_ms
            return None, f"no candidate could be scored within the {limit:g} ms deadline"
        budget = (deadline_ms or settings.deadline_ms) / 1e3 - (time.perf_counter() - t0)
        try:
            return await self.batcher.score(queries, texts, budget, ids, second_k), None
        except DeadlineExceeded:
            metrics.fallbacks.labels("deadline").inc()
            limit = deadline_ms or settings.deadline_ms
            return None, f"the model did not answer within the {limit:g} ms deadline"
        except Exception as exc:  # the model failed: first-stage order, never a 5xx
            metrics.fallbacks.labels("model_error").inc()
            return None, f"the model failed: {type(exc).__name__}: {str(exc)[:200]}"

    async def rank(
        self,
        query: str,
        count: int,
        texts: Callable[[int], list[str]] | None,
        deadline_ms: float | None,
        t0: float,
        *,
        ids: Callable[[int], tuple[np.ndarray, list[np.ndarray]] | None] | None = None,
        tie_key: Callable[[int], Any] = lambda i: i,
    ) -> Ranking:
        """Rank ``count`` documents for ``query``: the head that fits the deadline is scored
        (``ids(k)``: stored token ids of the first k, or None; else ``texts(k)``), ordered by
        score (ties by ``tie_key``), and the rest follow in the order given."""
        k, second_k = self.fitting(count, deadline_ms, t0)
        raw, scored, reason = None, None, None
        if count:
            # stored forms only for a model that scores them (a cascade's second stage reads text)
            by_ids = ids is not None and hasattr(self.model, "score_ids")
            stored = ids(k) if by_ids else None
            head = [] if stored is not None else (texts(k) if texts is not None else [])
            scored, reason = await self.scores(
                [query] * len(head), head, deadline_ms, t0, stored, second_k
            )
        order = list(range(count))
        probability = None
        if scored is not None:
            raw, probability = scored
            order[:k] = sorted(range(k), key=lambda i: (-raw[i], tie_key(i)))
        return Ranking(
            order,
            raw,
            probability,
            k if raw is not None else 0,
            reason,
            time.perf_counter() - t0,
            rescored_count(self.model, k, second_k) if raw is not None else None,
        )
