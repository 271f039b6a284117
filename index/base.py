"""The first-stage contract: a retriever turns a query into scored candidate products."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from reranker.catalog import Product


@dataclass(frozen=True)
class Candidate:
    """A product found by the first stage, with its retrieval score and 1-based rank."""

    product: Product
    score: float
    rank: int
    row: int | None = None  # the product's position in an embedded index (for stored token ids)


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns the top-``k`` candidates for a query, best first.

    Ties must break by product id ascending so results are reproducible.
    """

    def retrieve(self, query: str, k: int) -> list[Candidate]: ...
