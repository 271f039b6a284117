"""Error hierarchy. Every message is one line; the CLI prints it and exits non-zero, the service
maps it to a 4xx/5xx status."""

from __future__ import annotations


class RerankerError(Exception):
    """Base class of every error kd-reranker raises on purpose."""


class CatalogError(RerankerError):
    """The catalog file cannot be read or has invalid rows."""


class SearchIndexError(RerankerError):
    """Problems with an on-disk search index."""


class IndexNotFoundError(SearchIndexError):
    pass


class IndexExistsError(SearchIndexError):
    pass


class IndexCorruptError(SearchIndexError):
    pass


class ModelError(RerankerError):
    """A reranker model directory is missing, corrupt or incompatible."""


class ModelNotInstalledError(ModelError):
    pass


class QueryError(RerankerError, ValueError):
    """The query cannot be searched (for example, it is empty)."""


class RetrieverUnavailableError(RerankerError):
    """The first-stage retriever (e.g. a remote cluster) cannot answer."""


class DataError(RerankerError, ValueError):
    """Training or evaluation data is invalid (missing columns, labels out of range, ...)."""
