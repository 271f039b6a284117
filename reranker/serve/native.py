"""The native dialect: ``POST /rerank`` (``{query, documents, ...}``) and ``POST /search``.

``/rerank`` also answers Hugging Face TEI's body (``{query, texts, ...}``): the two are told
apart by the body (``texts`` without ``documents`` is TEI, see :mod:`reranker.serve.tei`).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reranker.errors import RetrieverUnavailableError
from reranker.pipeline import corrections
from reranker.serve import tei
from reranker.serve.core import ApiError, Scoring, check_count, check_query, document_text


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
    rescored_k: int | None = None  # a cascade: how many of those its second stage rescored
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


def _http(exc: ApiError) -> HTTPException:
    return HTTPException(exc.status, exc.message)


async def rerank_native(req: RerankRequest, core: Scoring) -> RerankResponse:
    t0 = time.perf_counter()
    settings = core.settings
    try:
        query = check_query(req.query, settings)
        check_count(len(req.documents), settings)
        texts = [
            document_text(i, d, core.fields, settings.max_field_chars)
            for i, d in enumerate(req.documents)
        ]
    except ApiError as exc:
        raise _http(exc) from None
    ranking = await core.rank(query, len(texts), lambda k: texts[:k], req.deadline_ms, t0)
    t1 = time.perf_counter()
    scores: list[float | None] = [None] * len(texts)
    if ranking.reranked:
        scores[: ranking.scored] = [float(p) for p in ranking.probability]
    top = ranking.order[: req.top_n] if req.top_n else ranking.order
    results = []
    for i in top:
        extra: dict[str, Any] = {}
        doc = req.documents[i]
        if isinstance(doc, dict) and "id" in doc:
            extra["id"] = doc["id"]
        if req.return_documents:
            extra["document"] = doc
        results.append(RerankResult(index=i, relevance_score=scores[i], **extra))
    core.metrics.stage.labels("rerank").observe(t1 - t0)
    return RerankResponse(
        results=results,
        reranked=ranking.reranked,
        reranked_k=ranking.scored,
        rescored_k=ranking.rescored,
        **({"fallback_reason": ranking.reason} if ranking.reason else {}),
        model=core.model_name,
        timings={"rerank_ms": (t1 - t0) * 1e3, "total_ms": (time.perf_counter() - t0) * 1e3},
    )


def register(app: FastAPI, core: Scoring, retriever, tokens) -> None:
    """``/rerank`` (native or TEI, by body) and ``/search`` over the loaded index."""
    metrics = core.metrics

    @app.post(
        "/rerank",
        response_model=None,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                RerankRequest.model_json_schema(),
                                tei.TeiRerankRequest.model_json_schema(),
                            ]
                        }
                    }
                },
            }
        },
        summary="Rerank documents (native body, or Hugging Face TEI's {query, texts})",
    )
    async def rerank(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(422, "the request body is not valid JSON") from None
        if tei.is_tei_body(body):
            metrics.dialect_requests.labels("tei").inc()
            return await tei.rerank(body, core)
        metrics.dialect_requests.labels("native").inc()
        try:
            req = RerankRequest.model_validate(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None
        response = await rerank_native(req, core)
        return response.model_dump(exclude_unset=True)

    @app.post("/search")
    async def search(req: SearchRequest) -> dict:
        if retriever is None:
            raise HTTPException(404, "no index is loaded: start the service with an index")
        t0 = time.perf_counter()
        try:
            query = check_query(req.query, core.settings)
        except ApiError as exc:
            raise _http(exc) from None
        k, n = req.k or core.settings.k, req.n or core.settings.n
        try:
            candidates = await run_in_threadpool(retriever.retrieve, query, k)
        except RetrieverUnavailableError as exc:
            raise HTTPException(503, str(exc)) from None
        t1 = time.perf_counter()
        metrics.stage.labels("retrieve").observe(t1 - t0)

        def stored(k_head):
            head = candidates[:k_head]
            if tokens is not None and all(c.row is not None for c in head):
                return core.model.query_ids(query), tokens.rows([c.row for c in head])
            return None

        ranking = await core.rank(
            query,
            len(candidates),
            lambda k_head: [c.product.text(core.fields) for c in candidates[:k_head]],
            req.deadline_ms,
            t0,
            ids=stored,
            tie_key=lambda i: candidates[i].product.id,
        )
        t2 = time.perf_counter()
        metrics.stage.labels("rerank").observe(t2 - t1)

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
            if ranking.reranked and i < ranking.scored:
                out |= {
                    "rerank_score": float(ranking.raw[i]),
                    "rerank_probability": float(ranking.probability[i]),
                }
            return out

        body = {
            "query": query,
            "corrected": corrections(retriever, query),
            "reranked": ranking.reranked,
            "fallback_reason": ranking.reason,
            "model": core.model_name,
            "candidates": len(candidates),
            "reranked_k": ranking.scored,
            "rescored_k": ranking.rescored,
            "results": [item(i, r) for r, i in enumerate(ranking.order[:n], start=1)],
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
