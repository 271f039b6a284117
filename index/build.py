"""Catalog file → embedded index, in one call (what `reranker index` runs)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reranker.catalog import FieldMapping, SkippedRow, read_catalog
from reranker.index import store
from reranker.index.bm25 import DEFAULT_B, DEFAULT_K1, BM25Index
from reranker.index.dense import DEFAULT_MIN_SIMILARITY, DEFAULT_WEIGHT
from reranker.text import DEFAULT_STEMMER, BM25Tokenizer


@dataclass(frozen=True)
class IndexReport:
    destination: str  # the index directory, or URL/alias for OpenSearch
    indexed: int
    skipped: tuple[SkippedRow, ...]  # catalog rows left out (--skip-invalid)
    skipped_file: Path | None  # where the full list of skipped rows is stored
    seconds: float
    failed: tuple[tuple[str, str], ...] = ()  # documents the cluster rejected: (id, reason)


def index_catalog(
    catalog_path: str | Path,
    index_dir: str | Path,
    mapping: FieldMapping | None = None,
    *,
    fmt: str | None = None,
    skip_invalid: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    model=None,
    embedder=None,
    dense_weight: float | None = None,
    min_similarity: float | None = None,
    stemmer: str | None = DEFAULT_STEMMER,
    bm25_k1: float = DEFAULT_K1,
    bm25_b: float = DEFAULT_B,
) -> IndexReport:
    """Read, validate and index a catalog into ``index_dir`` (atomically).

    Skipped rows (with ``skip_invalid``) are listed in the index's ``skipped.json``. With
    ``model`` (a :class:`~reranker.crossencoder.CrossEncoder`), every product's token ids for that
    model are stored too, so reranking with it tokenises only the query. With ``embedder`` (a
    :class:`~reranker.embedder.TextEmbedder`), every product's vector is stored and retrieval
    is hybrid (:mod:`reranker.index.dense`; ``dense_weight``: the cosine's weight,
    ``min_similarity``: the cosine a product without any query token needs).
    ``stemmer``: the Snowball stemmer of BM25's tokens (``None``: none); ``bm25_k1``,
    ``bm25_b``: BM25's term-frequency saturation and length normalisation
    (:data:`reranker.index.bm25.DEFAULT_K1`).
    """
    start = time.perf_counter()
    if store.exists(index_dir) and not overwrite:  # fail before the slow part
        store.Generation(index_dir)  # raises IndexExistsError
    catalog = read_catalog(
        catalog_path, mapping, fmt=fmt, skip_invalid=skip_invalid, progress=progress
    )
    index = BM25Index.build(
        catalog, tokenizer=BM25Tokenizer(stemmer=stemmer), k1=bm25_k1, b=bm25_b, progress=progress
    )
    if embedder is not None:
        index.add_dense(
            embedder,
            weight=DEFAULT_WEIGHT if dense_weight is None else dense_weight,
            min_similarity=DEFAULT_MIN_SIMILARITY if min_similarity is None else min_similarity,
            progress=progress,
        )
    if model is not None:
        index.add_product_tokens(model, progress=progress)
    skipped = [{"row": s.row, "reason": s.reason, "id": s.id} for s in catalog.skipped]
    index.save(index_dir, overwrite=overwrite, skipped=json.dumps(skipped))
    return IndexReport(
        str(index_dir),
        len(index),
        catalog.skipped,
        index.generation / "skipped.json",
        time.perf_counter() - start,
    )


def index_catalog_opensearch(
    catalog_path: str | Path,
    options,
    name: str,
    mapping: FieldMapping | None = None,
    *,
    fmt: str | None = None,
    skip_invalid: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    rerank_fields: Sequence[str] | None = None,
    search_pipeline: str | None = None,
    bm25_k1: float = DEFAULT_K1,
    bm25_b: float = DEFAULT_B,
    embedder=None,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
) -> IndexReport:
    """Read and validate a catalog, bulk-load it into OpenSearch behind alias ``name``
    (``options``: a :class:`reranker.index.opensearch.ConnectionOptions`); ``rerank_fields``:
    store each product's model text for OpenSearch's rerank processor; ``bm25_k1``, ``bm25_b``:
    the index's BM25 parameters; ``embedder``: store every product's embedding (hybrid
    retrieval, ``min_similarity`` as in the embedded index)."""
    from reranker.index import opensearch

    start = time.perf_counter()
    catalog = read_catalog(
        catalog_path, mapping, fmt=fmt, skip_invalid=skip_invalid, progress=progress
    )
    report = opensearch.index_catalog_opensearch(
        catalog,
        options,
        name,
        overwrite=overwrite,
        allow_failures=skip_invalid,
        progress=progress,
        rerank_fields=rerank_fields,
        search_pipeline=search_pipeline,
        bm25_k1=bm25_k1,
        bm25_b=bm25_b,
        embedder=embedder,
        min_similarity=min_similarity,
    )
    return IndexReport(
        f"{options.url} alias {name!r} -> {report.physical_index}",
        report.indexed,
        catalog.skipped,
        None,
        time.perf_counter() - start,
        report.failed,
    )
