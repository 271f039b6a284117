"""First stage: the retriever interface, the embedded BM25 index, the OpenSearch retriever,
catalog → index."""

from __future__ import annotations

from pathlib import Path

from reranker.index.base import Candidate, Retriever
from reranker.index.bm25 import BM25Index

BACKENDS = ("embedded", "opensearch")


def open_retriever(
    backend: str = "embedded",
    *,
    index_dir: str | Path | None = None,
    opensearch=None,
    name: str | None = None,
    exact_words: bool = False,
) -> Retriever:
    """The embedded index at ``index_dir``, or OpenSearch index/alias ``name`` reached with
    ``opensearch`` (a :class:`reranker.index.opensearch.ConnectionOptions`). ``exact_words``:
    search the query's words as typed (no spelling correction in the embedded index, no fuzzy
    matching in OpenSearch)."""
    if backend == "embedded":
        if index_dir is None:
            raise ValueError("the embedded backend needs index_dir")
        index = BM25Index.load(index_dir)
        index.correct_spelling = not exact_words
        return index
    if backend == "opensearch":
        from reranker.index.opensearch import ConnectionOptions, OpenSearchRetriever

        return OpenSearchRetriever(
            opensearch or ConnectionOptions(), name or "products", fuzzy=not exact_words
        )
    raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "BM25Index", "Candidate", "Retriever", "open_retriever"]
