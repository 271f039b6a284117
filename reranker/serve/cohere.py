"""Cohere's rerank dialect, ``POST /v1/rerank`` and ``POST /v2/rerank``: what the ``cohere``
SDK (``Client`` and ``ClientV2`` with ``base_url`` pointed here), Jina's rerank API and
OpenSearch's Cohere connector (ml-commons ``connector.pre_process.cohere.rerank``) send.

Request: ``{model?, query, documents, top_n?, return_documents?, max_tokens_per_doc?,
rank_fields?, max_chunks_per_doc?, ...}``; a document is a string or an object with ``text`` (or,
as in the native dialect, a ``title`` and catalog fields). Answer: ``{id, results: [{index,
relevance_score, document?}], meta, model}`` best first (``meta`` as Cohere's, ``model`` as
Jina's). ``relevance_score`` is the model's probability. Every document gets a
score (OpenSearch's rerank processor needs one for each): a fallback answer (no model, deadline,
model error) keeps the order given with scores that sort that way, and says so in
``meta.warnings``, in the header ``X-Reranked: false`` and in ``kd_fallbacks`` on ``/metrics``.
Errors are Cohere's ``{"message": ...}``: 400 for an invalid request, 413 past a size limit.
``max_tokens_per_doc`` and ``max_chunks_per_doc`` are accepted; documents are cut to the model's
own length.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reranker.serve.core import (
    ApiError,
    Scoring,
    check_count,
    check_query,
    document_text,
    validation_message,
)


class CohereRerankRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # newer Cohere fields (priority, ...) are ignored

    query: str
    documents: list[str | dict[str, Any]]
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool | None = None
    rank_fields: list[str] | None = None
    max_tokens_per_doc: int | None = Field(default=None, ge=1)
    max_chunks_per_doc: int | None = Field(default=None, ge=1)
    deadline_ms: float | None = Field(default=None, gt=0, le=60_000)  # an extension of ours


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"id": str(uuid.uuid4()), "message": message}, status_code=status)


def _document(doc: str | dict[str, Any]) -> dict[str, Any]:
    """A document as Cohere returns it: ``{text}`` for a string, the object otherwise."""
    return {"text": doc} if isinstance(doc, str) else doc


async def rerank(body: Any, core: Scoring, version: str) -> JSONResponse:
    t0 = time.perf_counter()
    if not isinstance(body, dict):
        return error(400, "invalid request: the body must be a JSON object")
    try:
        req = CohereRerankRequest.model_validate(body)
    except ValidationError as exc:
        return error(400, f"invalid request: {validation_message(exc)}")
    settings = core.settings
    try:
        query = check_query(req.query, settings)
        if not req.documents:
            raise ApiError(400, "invalid request: list of documents must not be empty")
        check_count(len(req.documents), settings)
        texts = [
            document_text(i, d, core.fields, settings.max_field_chars, rank_fields=req.rank_fields)
            for i, d in enumerate(req.documents)
        ]
    except ApiError as exc:
        return error(400 if exc.status == 422 else exc.status, exc.message)
    ranking = await core.rank(query, len(texts), lambda k: texts[:k], req.deadline_ms, t0)
    scores = ranking.ordering_scores()
    top = ranking.order[: req.top_n] if req.top_n else ranking.order
    results = []
    for i in top:
        # 7 significant digits: OpenSearch's connector parses longer numbers as BigDecimal and
        # then fails to read them as a Double
        item: dict[str, Any] = {"index": i, "relevance_score": float(f"{scores[i]:.7g}")}
        if req.return_documents:
            item["document"] = _document(req.documents[i])
        results.append(item)
    meta: dict[str, Any] = {
        "api_version": {"version": version},
        "billed_units": {"search_units": 1},
    }
    if not ranking.reranked:
        meta["warnings"] = [f"not reranked: {ranking.reason}; documents are in the order given"]
    elif ranking.scored < len(texts):
        meta["warnings"] = [
            f"the first {ranking.scored} of {len(texts)} documents were reranked within the "
            "deadline; the rest follow in the order given"
        ]
    core.metrics.stage.labels("rerank").observe(time.perf_counter() - t0)
    headers = {"X-Reranked": "true" if ranking.reranked else "false"}
    if ranking.reason:
        headers["X-Rerank-Fallback"] = ranking.reason
    answer = {
        "id": str(uuid.uuid4()),
        "results": results,
        "meta": meta,
        "model": core.model_name or req.model,
    }
    return JSONResponse(answer, headers=headers)


def _route(core: Scoring, version: str):
    async def route(request: Request) -> JSONResponse:
        core.metrics.dialect_requests.labels(f"cohere-v{version}").inc()
        try:
            body = await request.json()
        except ValueError:
            return error(400, "invalid request: the body is not valid JSON")
        return await rerank(body, core, version)

    return route


def register(app: FastAPI, core: Scoring) -> None:
    for version in ("1", "2"):
        app.add_api_route(
            f"/v{version}/rerank",
            _route(core, version),
            methods=["POST"],
            summary=f"Rerank documents (Cohere v{version} rerank API; Jina's on /v1/rerank)",
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": CohereRerankRequest.model_json_schema()}
                    },
                }
            },
        )
