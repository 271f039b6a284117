"""Hugging Face Text Embeddings Inference (TEI) dialect on ``POST /rerank``.

Request: ``{query, texts, raw_scores?, return_text?, truncate?, truncation_direction?}``; answer:
a list ``[{index, score, text?}]`` best first, ``score`` the model's probability (its raw logit
with ``raw_scores``). TEI has no field for "not reranked": a fallback answer (no model, deadline,
model error) keeps the order given, with scores that sort that way, and says so in the headers
``X-Reranked: false`` and ``X-Rerank-Fallback`` (and in ``kd_fallbacks`` on ``/metrics``).
Errors are TEI's ``{error, error_type}`` (422 validation, 413 too many texts or too long a text).
Texts are always cut to the model's own length (``truncate`` is accepted; TEI's own default
would refuse a long text).
"""

from __future__ import annotations

import time
from typing import Any, Literal

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


class TeiRerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: Literal["Left", "Right", "left", "right"] | None = None
    deadline_ms: float | None = Field(default=None, gt=0, le=60_000)  # an extension of ours


def is_tei_body(body: Any) -> bool:
    return isinstance(body, dict) and "texts" in body and "documents" not in body


def error(status: int, message: str, error_type: str = "Validation") -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status)


async def rerank(body: dict, core: Scoring) -> JSONResponse:
    t0 = time.perf_counter()
    try:
        req = TeiRerankRequest.model_validate(body)
    except ValidationError as exc:
        return error(422, validation_message(exc))
    settings = core.settings
    try:
        query = check_query(req.query, settings)
        if not req.texts:
            raise ApiError(422, "`texts` cannot be empty")
        check_count(len(req.texts), settings, "texts")
        texts = [
            document_text(i, t, core.fields, settings.max_field_chars, where="texts")
            for i, t in enumerate(req.texts)
        ]
    except ApiError as exc:
        return error(exc.status, exc.message)
    ranking = await core.rank(query, len(texts), lambda k: texts[:k], req.deadline_ms, t0)
    scores = ranking.ordering_scores(raw=req.raw_scores)
    out = []
    for i in ranking.order:
        item: dict[str, Any] = {"index": i, "score": scores[i]}
        if req.return_text:
            item["text"] = req.texts[i]
        out.append(item)
    core.metrics.stage.labels("rerank").observe(time.perf_counter() - t0)
    headers = {"X-Reranked": "true" if ranking.reranked else "false"}
    if ranking.reason:
        headers["X-Rerank-Fallback"] = ranking.reason
    return JSONResponse(out, headers=headers)
