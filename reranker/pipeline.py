"""retrieve top-k → rerank → top-n, with typed, frozen results."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from reranker.cascade import rescored_count
from reranker.crossencoder import CrossEncoder
from reranker.errors import ModelNotInstalledError, QueryError
from reranker.index.base import Candidate, Retriever
from reranker.models import PACKAGED_MODELS, open_model, resolve_model_dir

#: Where the shipped default student lives inside the package (if one is installed).
PACKAGED_MODEL_DIR = PACKAGED_MODELS / "default"
MODEL_ENV = "RERANKER_MODEL"


@dataclass(frozen=True)
class SearchResult:
    """One product in the final list."""

    product_id: str
    title: str
    fields: Mapping[str, str]
    rank: int  # final rank, 1-based
    retrieval_rank: int
    retrieval_score: float
    rerank_score: float | None = None  # the model's raw logit
    rerank_probability: float | None = None  # activation(raw), the model's P(relevant)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"fields": dict(self.fields)}


@dataclass(frozen=True)
class Timings:
    retrieve_ms: float
    rerank_ms: float
    total_ms: float


@dataclass(frozen=True)
class SearchResponse:
    query: str
    results: tuple[SearchResult, ...]
    reranked: bool
    candidates: int  # how many the first stage returned
    timings: Timings
    model: str | None = None
    reranked_k: int = 0  # how many of the candidates the model scored (the rest: first-stage order)
    #: a cascade: how many of those its second stage rescored (None: a single model)
    rescored_k: int | None = None
    #: query words the first stage searched as others (spelling), e.g. {"stainles": "stainless"}
    corrected: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "query": self.query,
            "corrected": dict(self.corrected),
            "reranked": self.reranked,
            "model": self.model,
            "candidates": self.candidates,
            "reranked_k": self.reranked_k,
            "rescored_k": self.rescored_k,
            "timings": asdict(self.timings),
            "results": [r.to_dict() for r in self.results],
        }


def default_model_dir() -> Path | None:
    """The model ``reranker search`` uses without ``--model``: ``$RERANKER_MODEL`` (a directory
    or a shipped profile's name, e.g. ``accurate``), else the student shipped inside the package,
    else ``None``."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return resolve_model_dir(env)
    return PACKAGED_MODEL_DIR if (PACKAGED_MODEL_DIR / "reranker.json").is_file() else None


def load_model(model_dir: str | Path | None = None, **kwargs) -> CrossEncoder:
    """The model at ``model_dir``, or the default one (see :func:`default_model_dir`)."""
    return open_model(model_dir, **kwargs) if model_dir else load_default_model(**kwargs)


def attach_product_states(model: CrossEncoder, index_dir: str | Path) -> int:
    """Let a late student read the states stored in the embedded index at ``index_dir`` for
    products that reach it as text (the same text as the index's, e.g. OpenSearch's
    ``rerank_text``); returns how many texts it holds. A plain cross-encoder needs none (it
    tokenises a text in microseconds): 0."""
    from reranker.errors import ModelError
    from reranker.index import BM25Index

    if not hasattr(model, "attach_store"):
        return 0
    index = BM25Index.load(index_dir)
    store = index.tokens_for(model.token_key)
    if store is None:
        raise ModelError(
            f"the index at {index_dir} holds no product states for model {model.name}: "
            f"build it with `reranker index CATALOG --index-dir {index_dir}` and this model"
        )
    texts = [p.text(model.config.fields) for p in index.products_at(range(len(index)))]
    return model.attach_store(store, texts)


def load_default_model(**kwargs) -> CrossEncoder:
    path = default_model_dir()
    if path is None:
        raise ModelNotInstalledError(
            "no reranker model is installed: pass --model DIR (a directory written by "
            f"`reranker export`), set ${MODEL_ENV}, or use --no-rerank for BM25 order"
        )
    return open_model(path, **kwargs)


class SearchPipeline:
    """First stage, then the cross-encoder on the top ``k``, returning the best ``n``.

    >>> from reranker import BM25Index, CrossEncoder, SearchPipeline
    >>> index = BM25Index.load("demo/index")  # doctest: +SKIP
    >>> pipeline = SearchPipeline(index, CrossEncoder("model"))  # doctest: +SKIP
    >>> response = pipeline.search("cordless drill", k=100, n=10)  # doctest: +SKIP
    >>> response.results[0].title  # doctest: +SKIP
    """

    def __init__(
        self,
        retriever: Retriever,
        reranker: CrossEncoder | None = None,
        *,
        k: int = 100,
        n: int = 10,
    ) -> None:
        self.retriever = retriever
        self.reranker = reranker
        self.k = k
        self.n = n
        #: Product token ids stored with the index for this model (None: tokenise product text).
        self.product_tokens = None
        if reranker is not None and hasattr(retriever, "tokens_for"):
            self.product_tokens = retriever.tokens_for(reranker.token_key)

    def search(
        self,
        query: str,
        *,
        k: int | None = None,
        n: int | None = None,
        rerank: bool = True,
        budget_ms: float | None = None,
    ) -> SearchResponse:
        """Retrieve ``k``, rerank, return the best ``n``. With ``budget_ms`` (for the whole
        search), the model scores only as many of the top candidates as its learnt cost says fit
        in what retrieval left of the budget; the others follow in first-stage order
        (``reranked_k`` says how many were scored)."""
        if not isinstance(query, str) or not query.strip():
            raise QueryError("query is empty")
        k = self.k if k is None else k
        n = self.n if n is None else n
        if k < 1 or n < 1:
            raise QueryError(f"k and n must be at least 1 (got k={k}, n={n})")
        t0 = time.perf_counter()
        candidates = self.retriever.retrieve(query, k)
        t1 = time.perf_counter()
        k_model = len(candidates) if rerank and self.reranker is not None else 0
        second_k = None  # a cascade's second stage: its own count unless a budget cuts it
        if k_model and budget_ms is not None:
            left = budget_ms - (t1 - t0) * 1e3
            k_model, second_k = self.reranker.calibrate_latency().split(left, len(candidates))
        use_model = k_model > 0
        if use_model:
            results = self._rerank(query, candidates[:k_model], second_k)
            results += [
                _result(c, rank) for rank, c in enumerate(candidates[k_model:], k_model + 1)
            ]
        else:
            results = [_result(c, c.rank) for c in candidates]
        t2 = time.perf_counter()
        return SearchResponse(
            query=query,
            results=tuple(results[:n]),
            reranked=use_model,
            candidates=len(candidates),
            timings=Timings(
                retrieve_ms=(t1 - t0) * 1e3, rerank_ms=(t2 - t1) * 1e3, total_ms=(t2 - t0) * 1e3
            ),
            model=self.reranker.name if use_model else None,
            reranked_k=k_model,
            rescored_k=rescored_count(self.reranker, k_model, second_k) if use_model else None,
            corrected=corrections(self.retriever, query),
        )

    def _rerank(
        self, query: str, candidates: list[Candidate], second_k: int | None = None
    ) -> list[SearchResult]:
        assert self.reranker is not None
        ids = None
        if self.product_tokens is not None and all(c.row is not None for c in candidates):
            ids = self.product_tokens.rows([c.row for c in candidates])
        products = [c.product for c in candidates]
        if second_k is None:
            scores = self.reranker.score_products(query, products, ids)
        else:
            scores = self.reranker.score_products(query, products, ids, second_k=second_k)
        order = sorted(
            range(len(candidates)), key=lambda i: (-scores.raw[i], candidates[i].product.id)
        )
        return [
            _result(candidates[i], rank, float(scores.raw[i]), float(scores.probability[i]))
            for rank, i in enumerate(order, start=1)
        ]


def corrections(retriever, query: str) -> dict[str, str]:
    """The query words ``retriever`` searched as others (an embedded index corrects unknown
    words; other retrievers: none)."""
    return retriever.corrections(query) if hasattr(retriever, "corrections") else {}


def _result(
    c: Candidate, rank: int, raw: float | None = None, prob: float | None = None
) -> SearchResult:
    return SearchResult(
        product_id=c.product.id,
        title=c.product.title,
        fields=c.product.fields,
        rank=rank,
        retrieval_rank=c.rank,
        retrieval_score=c.score,
        rerank_score=raw,
        rerank_probability=prob,
    )
