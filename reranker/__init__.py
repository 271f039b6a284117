"""kd-reranker: BM25 first stage + distilled cross-encoder reranking for product search.

>>> from reranker import BM25Index, CrossEncoder, SearchPipeline
>>> index = BM25Index.load("demo/index")  # doctest: +SKIP
>>> pipeline = SearchPipeline(index, CrossEncoder("path/to/model"))  # doctest: +SKIP
>>> for r in pipeline.search("cordless drill").results:  # doctest: +SKIP
...     print(r.rank, r.retrieval_rank, r.title)
"""

from pathlib import Path as _Path

# Installed, index/ and training/ are the subpackages reranker.index and reranker.training. In a
# source checkout they sit beside reranker/, so Python started there (cwd on sys.path) finds this
# folder first: extend the package path to the checkout so the same imports work.
if not (_Path(__file__).parent / "index").is_dir():
    __path__.append(str(_Path(__file__).resolve().parent.parent))  # noqa: F821 (package __path__)

from reranker._version import __version__  # noqa: E402
from reranker.catalog import Catalog, FieldMapping, Product, read_catalog
from reranker.crossencoder import CrossEncoder, ModelConfig, Scores
from reranker.errors import (
    CatalogError,
    IndexCorruptError,
    IndexExistsError,
    IndexNotFoundError,
    ModelError,
    ModelNotInstalledError,
    QueryError,
    RerankerError,
    RetrieverUnavailableError,
    SearchIndexError,
)
from reranker.index import BM25Index, Candidate, Retriever
from reranker.models import open_model
from reranker.pipeline import (
    SearchPipeline,
    SearchResponse,
    SearchResult,
    Timings,
    default_model_dir,
    load_default_model,
    load_model,
)
from reranker.text import BM25Tokenizer, product_text, searchable_text

__all__ = [
    "BM25Index",
    "BM25Tokenizer",
    "Candidate",
    "Catalog",
    "CatalogError",
    "CrossEncoder",
    "FieldMapping",
    "IndexCorruptError",
    "IndexExistsError",
    "IndexNotFoundError",
    "ModelConfig",
    "ModelError",
    "ModelNotInstalledError",
    "Product",
    "QueryError",
    "RerankerError",
    "Retriever",
    "RetrieverUnavailableError",
    "Scores",
    "SearchIndexError",
    "SearchPipeline",
    "SearchResponse",
    "SearchResult",
    "Timings",
    "__version__",
    "default_model_dir",
    "load_default_model",
    "load_model",
    "open_model",
    "product_text",
    "read_catalog",
    "searchable_text",
]
