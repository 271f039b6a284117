"""The rerank service: an ASGI app (FastAPI) a search stack calls over HTTP. ``[serve]`` extra.

- ``POST /rerank``: ``{query, documents, top_n?, return_documents?, deadline_ms?}`` →
  ``{results: [{index, id?, relevance_score, document?}], reranked, timings, model}``; the field
  names follow the rerank APIs clients already call (Cohere, Jina, TEI).
- ``POST /search``: the whole pipeline over the loaded index (embedded or OpenSearch).
- ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /openapi.json``, and the web demo at ``/``.

One worker thread owns the model. Requests arriving together are scored in one batch
(micro-batching) while the event loop only waits. Each request has a deadline: if the model
cannot answer in time, or fails, the answer is the first-stage order with ``reranked: false``,
never a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reranker._extras import require

require("fastapi", "serve")
require("prometheus_client", "serve")

from fastapi import FastAPI, HTTPException, Request  # noqa: E402
from fastapi.concurrency import run_in_threadpool  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse, Response  # noqa: E402
from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from reranker._version import __version__  # noqa: E402
from reranker.errors import RerankerError, RetrieverUnavailableError  # noqa: E402
from reranker.text import product_text  # noqa: E402

WEB_DIR = Path(__file__).parent / "web"


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
        self.model_loaded = Gauge(
            "kd_model_loaded", "1 when a reranker model is loaded", registry=r
        )
        self.model_load_seconds = Gauge(
            "kd_model_load_seconds", "Time to load the model", registry=r
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
    ) -> np.ndarray:
        """Raw scores, or DeadlineExceeded after ``timeout_s``; model errors propagate. ``ids``:
        the query's and the products' token ids (stored with the index) instead of texts."""
        loop = asyncio.get_running_loop()
        job = _Job(queries, texts, loop.create_future(), loop, ids=ids)
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
                part = raw[start : start + j.pairs]
                start += j.pairs
                j.loop.call_soon_threadsafe(_set_result, j.future, part)

    def _score(self, batch: list[_Job]) -> np.ndarray:
        if not hasattr(self.model, "score_ids"):  # any object with score_pairs will do
            queries = [q for j in batch for q in j.queries]
            return self.model.score_pairs(queries, [t for j in batch for t in j.texts]).raw
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
        return self.model.score_ids(qids, pids).raw


def _set_result(fut: asyncio.Future, value) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


# --------------------------------------------------------------------------------- API shapes
class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str
    documents: list[str | dict[str, Any]]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    deadline_ms: float | None = Field(default=None, gt=0, le=60_000)
    model: str | None = None  # accepted for client compatibility; the loaded model is used


class RerankResult(BaseModel):
    index: int
    id: str | int | None = None
    relevance_score: float | None
    document: str | dict[str, Any] | None = None


class RerankResponse(BaseModel):
    results: list[RerankResult]
    reranked: bool
    reranked_k: int = 0  # documents the model scored; the rest follow in the order given
    fallback_reason: str | None = None
    model: str | None
    timings: dict[str, float]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str
    k: int | None = Field(default=None, ge=1, le=1000)
    n: int | None = Field(default=None, ge=1, le=1000)
    deadline_ms: float | None = Field(default=None, gt=0, le=60_000)
    compare: bool = False  # also return the first-stage order (the web demo shows both)


def _query(text: str, settings: ServiceSettings) -> str:
    if not text.strip():
        raise HTTPException(422, "query is empty")
    if len(text) > settings.max_query_chars:
        raise HTTPException(
            422,
            f"query has {len(text)} characters; "
            f"the limit is max_query_chars={settings.max_query_chars}",
        )
    return text


def _document_text(i: int, doc: str | dict[str, Any], fields: tuple[str, ...], limit: int) -> str:
    if isinstance(doc, str):
        values = {"document": doc}
    else:
        values = {k: v for k, v in doc.items() if k != "id"}
        if not values.get("text") and not values.get("title"):
            raise HTTPException(422, f"documents[{i}] needs a 'text' or a 'title'")
        for k, v in values.items():
            if v is not None and not isinstance(v, str | int | float):
                raise HTTPException(422, f"documents[{i}].{k} must be a string or a number")
    for k, v in values.items():
        if isinstance(v, str) and len(v) > limit:
            raise HTTPException(
                413,
                f"documents[{i}].{k} has {len(v)} characters; the limit is max_field_chars={limit}",
            )
    if isinstance(doc, str):
        return doc
    if values.get("text"):
        return str(values["text"])
    attrs = {k: None if v is None else str(v) for k, v in values.items() if k != "title"}
    return product_text(str(values["title"]), attrs, fields)


# --------------------------------------------------------------------------------- the app
class _BodyLimit:
    """Pure ASGI middleware: 413 for bodies over ``limit`` bytes, before anything parses them."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send) -> None:
        body = (
            b'{"detail": "request body is larger than max_body_bytes='
            + str(self.limit).encode()
            + b'"}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(
    model=None,
    retriever=None,
    settings: ServiceSettings | None = None,
    *,
    model_load_seconds: float = 0.0,
) -> FastAPI:
    """The service around an optional model (:class:`reranker.CrossEncoder` or anything with
    ``score_pairs`` and ``config.fields``) and an optional retriever (for ``/search``)."""
    settings = settings or ServiceSettings()
    metrics = Metrics()
    metrics.model_loaded.set(1 if model is not None else 0)
    metrics.model_load_seconds.set(model_load_seconds)
    batcher = (
        Batcher(
            model, metrics, max_batch_pairs=settings.max_batch_pairs, wait_ms=settings.batch_wait_ms
        )
        if model is not None
        else None
    )
    model_name = getattr(model, "name", None) if model is not None else None
    tokens = None  # product token ids stored with the index for this model
    if model is not None and hasattr(retriever, "tokens_for") and hasattr(model, "token_key"):
        tokens = retriever.tokens_for(model.token_key)
    fields = tuple(getattr(getattr(model, "config", None), "fields", ()) or ())

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if batcher is not None:
            batcher.close()

    app = FastAPI(
        lifespan=lifespan,
        title="kd-reranker",
        version=__version__,
        description="Distilled cross-encoder reranking for product search.",
    )
    app.state.metrics, app.state.batcher, app.state.settings = metrics, batcher, settings

    @app.middleware("http")
    async def count(request: Request, call_next):
        response = await call_next(request)
        metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    latency = getattr(model, "latency", None) if settings.adaptive else None
    if latency is not None and hasattr(model, "calibrate_latency"):
        model.calibrate_latency()  # before the first request, so k fits from the start

    def fitting(count: int, deadline_ms, t0) -> int:
        """How many of ``count`` candidates the model can score before the deadline, given
        what is queued ahead (all of them when the service is not adaptive)."""
        if latency is None or batcher is None:
            return count
        left = (deadline_ms or settings.deadline_ms) - (time.perf_counter() - t0) * 1e3
        return latency.k_for(0.8 * left - batcher.pending_ms(), count)

    async def rerank_scores(
        queries, texts, deadline_ms, t0, ids=None
    ) -> tuple[np.ndarray | None, str | None]:
        if batcher is None:
            metrics.fallbacks.labels("no_model").inc()
            return None, "no model is loaded"
        if not (len(ids[1]) if ids is not None else len(texts)):
            metrics.fallbacks.labels("deadline").inc()
            limit = deadline_ms or settings.deadline_ms
            return None, f"no candidate could be scored within the {limit:g} ms deadline"
        budget = (deadline_ms or settings.deadline_ms) / 1e3 - (time.perf_counter() - t0)
        try:
            return await batcher.score(queries, texts, budget, ids), None
        except DeadlineExceeded:
            metrics.fallbacks.labels("deadline").inc()
            limit = deadline_ms or settings.deadline_ms
            return None, f"the model did not answer within the {limit:g} ms deadline"
        except Exception as exc:  # the model failed: first-stage order, never a 5xx
            metrics.fallbacks.labels("model_error").inc()
            return None, f"the model failed: {type(exc).__name__}: {str(exc)[:200]}"

    @app.post("/rerank", response_model=RerankResponse, response_model_exclude_unset=True)
    async def rerank(req: RerankRequest) -> RerankResponse:
        t0 = time.perf_counter()
        query = _query(req.query, settings)
        if len(req.documents) > settings.max_documents:
            raise HTTPException(
                413,
                f"{len(req.documents)} documents; "
                f"the limit is max_documents={settings.max_documents}",
            )
        texts = [
            _document_text(i, d, fields, settings.max_field_chars)
            for i, d in enumerate(req.documents)
        ]
        raw, reason = (None, None)
        k_model = fitting(len(texts), req.deadline_ms, t0)
        if texts:
            head = texts[:k_model]
            raw, reason = await rerank_scores([query] * len(head), head, req.deadline_ms, t0)
        t1 = time.perf_counter()
        order = list(range(len(texts)))
        scores: list[float | None] = [None] * len(texts)
        if raw is not None:  # the scored head by score, then the rest in the order given
            probs = model._activate(raw) if hasattr(model, "_activate") else raw
            scores[:k_model] = [float(p) for p in probs]
            order[:k_model] = sorted(range(k_model), key=lambda i: (-raw[i], i))
        top = order[: req.top_n] if req.top_n else order
        results = []
        for i in top:
            extra: dict[str, Any] = {}
            doc = req.documents[i]
            if isinstance(doc, dict) and "id" in doc:
                extra["id"] = doc["id"]
            if req.return_documents:
                extra["document"] = doc
            results.append(RerankResult(index=i, relevance_score=scores[i], **extra))
        metrics.stage.labels("rerank").observe(t1 - t0)
        return RerankResponse(
            results=results,
            reranked=raw is not None,
            reranked_k=k_model if raw is not None else 0,
            **({"fallback_reason": reason} if reason else {}),
            model=model_name,
            timings={"rerank_ms": (t1 - t0) * 1e3, "total_ms": (time.perf_counter() - t0) * 1e3},
        )

    @app.post("/search")
    async def search(req: SearchRequest) -> dict:
        if retriever is None:
            raise HTTPException(404, "no index is loaded: start the service with an index")
        t0 = time.perf_counter()
        query = _query(req.query, settings)
        k, n = req.k or settings.k, req.n or settings.n
        try:
            candidates = await run_in_threadpool(retriever.retrieve, query, k)
        except RetrieverUnavailableError as exc:
            raise HTTPException(503, str(exc)) from None
        t1 = time.perf_counter()
        metrics.stage.labels("retrieve").observe(t1 - t0)
        raw, reason = (None, None)
        k_model = fitting(len(candidates), req.deadline_ms, t0)
        if candidates:
            head = candidates[:k_model]
            ids = None
            if tokens is not None and all(c.row is not None for c in head):
                ids = (model.query_ids(query), tokens.rows([c.row for c in head]))
            texts = [] if ids else [c.product.text(fields) for c in head]
            queries = [query] * len(texts)
            raw, reason = await rerank_scores(queries, texts, req.deadline_ms, t0, ids)
        t2 = time.perf_counter()
        metrics.stage.labels("rerank").observe(t2 - t1)
        order = list(range(len(candidates)))
        if raw is not None:  # the scored head by score, then the rest in first-stage order
            order[:k_model] = sorted(
                range(k_model), key=lambda i: (-raw[i], candidates[i].product.id)
            )
            probs = model._activate(raw) if hasattr(model, "_activate") else raw

        def item(i: int, rank: int) -> dict:
            c = candidates[i]
            out = {
                "rank": rank,
                "product_id": c.product.id,
                "title": c.product.title,
                "fields": dict(c.product.fields),
                "retrieval_rank": c.rank,
                "retrieval_score": c.score,
            }
            if raw is not None and i < k_model:
                out |= {"rerank_score": float(raw[i]), "rerank_probability": float(probs[i])}
            return out

        body = {
            "query": query,
            "reranked": raw is not None,
            "fallback_reason": reason,
            "model": model_name,
            "candidates": len(candidates),
            "reranked_k": k_model if raw is not None else 0,
            "results": [item(i, r) for r, i in enumerate(order[:n], start=1)],
            "timings": {
                "retrieve_ms": (t1 - t0) * 1e3,
                "rerank_ms": (t2 - t1) * 1e3,
                "total_ms": (time.perf_counter() - t0) * 1e3,
            },
        }
        if req.compare:
            body["first_stage"] = [item(i, i + 1) for i in range(min(n, len(candidates)))]
        metrics.stage.labels("total").observe(time.perf_counter() - t0)
        return body

    @app.get("/healthz")
    async def healthz() -> dict:
        return {
            "status": "ok",
            "model": model_name,
            "index": retriever is not None,
            "version": __version__,
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def demo() -> HTMLResponse:
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    @app.exception_handler(RerankerError)
    async def reranker_error(_request: Request, exc: RerankerError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    return app
