"""The HTTP app: the scoring core behind one module per wire dialect.

- native (:mod:`reranker.serve.native`): ``POST /rerank`` ``{query, documents, ...}`` and
  ``POST /search`` (the whole pipeline over the loaded index);
- Hugging Face TEI (:mod:`reranker.serve.tei`): ``POST /rerank`` ``{query, texts, ...}``;
- Cohere v1/v2, also Jina's and OpenSearch's Cohere connector (:mod:`reranker.serve.cohere`):
  ``POST /v1/rerank``, ``POST /v2/rerank``;
- ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /openapi.json``, the web demo at ``/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reranker._version import __version__
from reranker.errors import RerankerError
from reranker.serve import cohere, native
from reranker.serve.core import Batcher, Metrics, Scoring, ServiceSettings

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def _error_body(path: str, message: str) -> bytes:
    """A size-limit error in the shape of the dialect the path belongs to (``/rerank`` serves
    two: the native ``detail`` and TEI's ``error``/``error_type`` are both given)."""
    if path.startswith(("/v1/", "/v2/")):
        return json.dumps({"message": message}).encode()
    if path == "/rerank":
        both = {"detail": message, "error": message, "error_type": "Validation"}
        return json.dumps(both).encode()
    return json.dumps({"detail": message}).encode()


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
            return await self._reject(scope, send)
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
            await self._reject(scope, send)

    async def _reject(self, scope, send) -> None:
        body = _error_body(
            scope.get("path", ""), f"request body is larger than max_body_bytes={self.limit}"
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
    if hasattr(retriever, "prepare"):  # not at the first query: spelling table, embedder
        try:
            retriever.prepare()
        except RerankerError as exc:  # e.g. the cluster not up yet: the first search tells
            logging.getLogger(__name__).warning("first stage not prepared: %s", exc)
    tokens = None  # product token ids (or late states) stored with the index for this model
    if model is not None and hasattr(retriever, "tokens_for") and hasattr(model, "token_key"):
        tokens = retriever.tokens_for(model.token_key)
    if tokens is not None and not hasattr(model, "score_ids") and hasattr(model, "attach_store"):
        # a model scored by text (a cascade: its second stage reads text) still reads its first
        # stage's states from the index, found by product text
        rows = range(len(retriever))
        model.attach_store(
            tokens, [p.text(model.config.fields) for p in retriever.products_at(rows)]
        )

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

    core = Scoring(model, batcher, metrics, settings)
    native.register(app, core, retriever, tokens)
    cohere.register(app, core)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {
            "status": "ok",
            "model": core.model_name,
            "index": retriever is not None,
            "version": __version__,
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        if hasattr(model, "stored_hits"):  # a late student: stored states against encoding
            metrics.product_texts.labels("stored").set(model.stored_hits)
            metrics.product_texts.labels("encoded").set(model.encoded_texts)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def demo() -> HTMLResponse:
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    @app.exception_handler(RerankerError)
    async def reranker_error(_request: Request, exc: RerankerError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    return app
