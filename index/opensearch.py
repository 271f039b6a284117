"""OpenSearch first stage: the same retriever interface as the embedded index, for catalogs
that live in a cluster. Needs the ``[opensearch]`` extra (opensearch-py).

Hybrid, as the embedded index, when the index was built with an embedder (``reranker index
--backend opensearch``, the default where the cluster has the k-NN plugin): every document holds
its product's sentence embedding in a k-NN vector field, and :meth:`OpenSearchRetriever.retrieve`
scores the union of BM25's top k and the embedding's nearest k with the embedded index's formula
(:mod:`reranker.index.dense`): ``bm25 / max(bm25) + weight * cosine``, a product without any
query word kept only when its cosine reaches ``min_similarity``.

Index layout: ``NAME`` is an alias to a physical index ``NAME-<timestamp>``; a re-index builds
a new physical index, bulk-loads and refreshes it, then moves the alias in one atomic
``_aliases`` call, so searches never see a half-built index.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np
from tqdm.auto import tqdm

from reranker._extras import require
from reranker.catalog import Catalog, Product
from reranker.errors import (
    IndexExistsError,
    QueryError,
    RerankerError,
    RetrieverUnavailableError,
)
from reranker.index.base import Candidate
from reranker.index.bm25 import DEFAULT_B, DEFAULT_K1
from reranker.index.dense import (
    DEFAULT_MIN_SIMILARITY,
    DEFAULT_WEIGHT,
    FUSION,
    NO_SPINNING,
    fuse,
)

require("opensearchpy", "opensearch")

from opensearchpy import OpenSearch, helpers  # noqa: E402
from opensearchpy import exceptions as os_exc  # noqa: E402

#: How long a retriever trusts what it read of the index's mapping (hybrid or not, the
#: embedder's checksum) before reading it again: an alias moved by a re-index is followed.
META_TTL_S = 30.0
#: The query text sent is cut to this many characters and whitespace-separated words; the match
#: query would otherwise exceed the cluster's clause limit on absurd input.
MAX_QUERY_CHARS = 2048
MAX_QUERY_WORDS = 256
TITLE_BOOST = 2.0
#: Query words within this many edits of an indexed term match it too (OpenSearch's fuzzy
#: matching, on every word: none up to 3 letters, 1 edit for 4 to 6, 2 beyond). The embedded
#: index corrects only words no product has (:mod:`reranker.index.spelling`, ``AUTO``); here
#: known words expand too, so short ones are kept exact: on the held-out train queries
#: ``AUTO:4,7`` raised the recall of judged products in the top 100 0.741 → 0.743 and NDCG@10 in
#: OpenSearch's order 0.692 → 0.703, where ``AUTO`` lowered recall to 0.725 (dev: 0.740 → 0.754,
#: 0.708 → 0.726; ``training/REPORT.md``, seventeenth session).
FUZZINESS = "AUTO:4,7"


@dataclass(frozen=True)
class ConnectionOptions:
    """How to reach a cluster. TLS verification is on by default for https URLs."""

    url: str = "http://127.0.0.1:9200"
    username: str | None = None
    password: str | None = None
    ca_certs: str | None = None
    verify_certs: bool = True
    timeout: float = 10.0
    retries: int = 2

    def client(self) -> OpenSearch:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise RetrieverUnavailableError(
                f"not an OpenSearch URL: {self.url!r} (use http(s)://host:port)"
            )
        kwargs: dict = {
            "hosts": [self.url],
            "timeout": self.timeout,
            "max_retries": self.retries,
            "retry_on_timeout": self.retries > 0,
        }
        if self.username is not None:
            kwargs["http_auth"] = (self.username, self.password or "")
        if parsed.scheme == "https":
            kwargs.update(
                use_ssl=True, verify_certs=self.verify_certs, ssl_show_warn=self.verify_certs
            )
            if self.ca_certs:
                kwargs["ca_certs"] = self.ca_certs
        return OpenSearch(**kwargs)


@dataclass(frozen=True)
class BulkReport:
    index: str
    physical_index: str
    indexed: int
    failed: tuple[tuple[str, str], ...]  # (product id, reason)
    seconds: float


class BulkIndexError(RerankerError):
    """Documents that the cluster rejected, by product id."""

    def __init__(self, message: str, failed: tuple[tuple[str, str], ...]) -> None:
        super().__init__(message)
        self.failed = failed


def _describe_failures(failed: Sequence[tuple[str, str]], limit: int = 5) -> str:
    text = "; ".join(f"{pid} ({reason})" for pid, reason in failed[:limit])
    return text + (f"; and {len(failed) - limit} more" if len(failed) > limit else "")


def describe(exc: Exception, url: str) -> RetrieverUnavailableError:
    """A one-line, typed error naming the URL and what failed."""
    if isinstance(exc, os_exc.SSLError):
        msg = f"TLS failed talking to OpenSearch at {url}: {_short(exc)}"
    elif isinstance(exc, os_exc.ConnectionTimeout):
        msg = f"OpenSearch at {url} did not answer in time ({_short(exc)})"
    elif isinstance(exc, os_exc.ConnectionError):
        msg = f"OpenSearch at {url} is unreachable: {_short(exc)}"
    elif isinstance(exc, os_exc.AuthenticationException):
        msg = f"OpenSearch at {url} refused the credentials (401)"
    elif isinstance(exc, os_exc.AuthorizationException):
        msg = f"OpenSearch at {url} denied access (403): {_short(exc)}"
    elif isinstance(exc, os_exc.NotFoundError):
        msg = f"OpenSearch at {url}: index not found ({_short(exc)})"
    elif isinstance(exc, os_exc.TransportError):
        msg = f"OpenSearch at {url} answered {exc.status_code}: {_short(exc)}"
    else:
        msg = f"OpenSearch at {url} failed: {_short(exc)}"
    return RetrieverUnavailableError(msg)


def _short(exc: Exception) -> str:
    errno = re.search(r"\[Errno -?\d+\] [^)\]'\"]+", str(exc))
    if errno:
        return errno.group(0).strip()
    if isinstance(exc, os_exc.TransportError) and isinstance(exc.info, dict):
        err = exc.info.get("error")
        if isinstance(err, dict):
            return f"{err.get('type')}: {err.get('reason')}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(" caused by: ")[0][:300]


#: The model's product text (``reranker.text.product_text`` with the model's fields), stored for
#: OpenSearch's rerank processor to send (not searched).
RERANK_TEXT_FIELD = "rerank_text"


#: Each product's sentence embedding (hybrid indexes only): a k-NN vector, HNSW over cosine
#: similarity in Lucene's engine (the k-NN plugin's; OpenSearch's full distribution has it).
VECTOR_FIELD = "embedding"
#: A product's cosine similarity to the query's embedding, plus 1 (a script score may not be
#: negative); the k-NN plugin's Painless function, over the vector's doc values.
COSINE_SCRIPT = "1.0 + cosineSimilarity(params.v, doc[params.f])"


#: The analyzer of every searched field: the embedded index's tokens (runs of ASCII letters or of
#: digits, apart: ``reranker.text.DEFAULT_TOKEN_PATTERN`` before lowercasing), lowercased,
#: Snowball-stemmed (English).
ANALYZER = "kd_english"
#: ``DEFAULT_TOKEN_PATTERN`` for text not yet lowercased (the tokenizer runs before the filters).
TOKEN_PATTERN = "[A-Za-z]+|[0-9]+"


def mapping(
    attribute_fields: Sequence[str],
    rerank_fields: Sequence[str] | None = None,
    search_pipeline: str | None = None,
    *,
    k1: float = DEFAULT_K1,
    b: float = DEFAULT_B,
    dense: dict | None = None,
) -> dict:
    """Text fields for BM25 (the embedded index's tokens, lowercased and stemmed by Snowball's
    English stemmer, as the embedded index stems; the pattern tokenizer is core's, the filter
    analysis-common's, in every full distribution), the id as a keyword for tie-breaks, and the
    raw fields kept in ``_source`` for display; with ``rerank_fields``, the model's product text
    in ``rerank_text`` (stored, not searched); with ``search_pipeline``, the index's default
    search pipeline. Every field scores with BM25 of ``k1`` and ``b`` (the embedded index's
    defaults, :data:`reranker.index.bm25.DEFAULT_K1`; OpenSearch's own are 1.2 and 0.75). With
    ``dense`` (:func:`dense_meta`), a k-NN vector field of its dimension, and ``dense`` in the
    mapping's ``_meta`` for the retriever."""
    text = {"type": "text", "analyzer": ANALYZER}
    settings: dict = {
        "number_of_shards": 1,
        "number_of_replicas": 0,
        "similarity": {"default": {"type": "BM25", "k1": k1, "b": b}},
        "analysis": {
            "tokenizer": {"kd_words": {"type": "pattern", "pattern": TOKEN_PATTERN, "group": 0}},
            "filter": {"kd_english_stem": {"type": "snowball", "language": "English"}},
            "analyzer": {
                ANALYZER: {
                    "type": "custom",
                    "tokenizer": "kd_words",
                    "filter": ["lowercase", "kd_english_stem"],
                }
            },
        },
    }
    if search_pipeline:
        settings["search.default_pipeline"] = search_pipeline
    meta: dict = {"attribute_fields": list(attribute_fields)}
    properties: dict = {
        "product_id": {"type": "keyword"},
        "title": {**text, "copy_to": "all_text"},
        "attributes": {
            "properties": {a: {**text, "copy_to": "all_text"} for a in attribute_fields}
        },
        "all_text": text,
    }
    if rerank_fields is not None:
        meta["rerank_fields"] = list(rerank_fields)
        properties[RERANK_TEXT_FIELD] = {"type": "text", "index": False}
    mappings: dict = {"dynamic": "strict", "_meta": {"kd_reranker": meta}, "properties": properties}
    if dense is not None:
        settings["knn"] = True
        meta["dense"] = dense
        properties[VECTOR_FIELD] = {
            "type": "knn_vector",
            "dimension": int(dense["dim"]),
            "method": {"name": "hnsw", "space_type": "cosinesimil", "engine": "lucene"},
        }
        # searched from the vector index and doc values, never read back
        mappings["_source"] = {"excludes": [VECTOR_FIELD]}
    return {"settings": {"index": settings}, "mappings": mappings}


def dense_meta(
    embedder, *, weight: float = DEFAULT_WEIGHT, min_similarity: float = DEFAULT_MIN_SIMILARITY
) -> dict:
    """What a hybrid index records of its embedder (a :class:`reranker.embedder.TextEmbedder`)
    and its fusion, so that its retriever embeds queries with the same model."""
    return {
        "field": VECTOR_FIELD,
        "embedder_key": embedder.key(),
        "dim": int(embedder.config.dim),
        "weight": float(weight),
        "min_similarity": float(min_similarity),
        "fusion": FUSION,
    }


def document(product: Product, rerank_fields: Sequence[str] | None = None, vector=None) -> dict:
    doc = {"product_id": product.id, "title": product.title, "attributes": dict(product.fields)}
    if rerank_fields is not None:
        doc[RERANK_TEXT_FIELD] = product.text(rerank_fields)
    if vector is not None:  # 6 decimals: the JSON a third as long, cosines within 1e-5
        doc[VECTOR_FIELD] = [round(float(x), 6) for x in vector]
    return doc


class OpenSearchRetriever:
    """Top-k from an OpenSearch index or alias: BM25, or hybrid where the index holds product
    embeddings (module docstring); implements :class:`~reranker.index.Retriever`.

    >>> options = ConnectionOptions("https://search.internal:9200")  # doctest: +SKIP
    >>> retriever = OpenSearchRetriever(options, "products")  # doctest: +SKIP
    >>> retriever.retrieve("cordless drill", k=100)  # doctest: +SKIP
    """

    def __init__(
        self,
        options: ConnectionOptions,
        index: str,
        *,
        client: OpenSearch | None = None,
        fuzzy: bool = True,
        embedder_dir=None,
    ):
        """``embedder_dir``: the embedder a hybrid index was built with, when it is not the one
        shipped with the package (its checksum must match the index's record)."""
        self.options = options
        self.index = index
        self.client = client or options.client()
        #: the query's fuzziness (:data:`FUZZINESS`); None (``fuzzy=False``): words as typed
        self.fuzziness: str | None = FUZZINESS if fuzzy else None
        self.embedder_dir = embedder_dir
        self._meta: dict | None = None
        self._meta_read = 0.0
        self._embedder = None
        self._pool = None  # threads for the second of two searches sent at once

    @property
    def meta(self) -> dict:
        """What ``reranker index`` recorded in the index's mapping: read again every
        :data:`META_TTL_S` seconds, so a service follows its alias to a rebuilt index (hybrid or
        not) without a restart."""
        if self._meta is None or time.monotonic() - self._meta_read > META_TTL_S:
            try:
                info = self.client.indices.get_mapping(index=self.index)
            except Exception as exc:
                raise describe(exc, self.options.url) from None
            meta = next(iter(info.values()))["mappings"].get("_meta", {}).get("kd_reranker", {})
            if self._meta is not None and meta.get("dense") != self._meta.get("dense"):
                self._embedder = None  # checked again against the new index's record
            self._meta, self._meta_read = meta, time.monotonic()
        return self._meta

    @property
    def attribute_fields(self) -> tuple[str, ...]:
        return tuple(self.meta.get("attribute_fields", ()))

    @property
    def dense(self) -> dict | None:
        """The index's embedder and fusion (:func:`dense_meta`); None: BM25 alone."""
        return self.meta.get("dense")

    @property
    def embedder(self):
        """The embedder of the index's vectors (opened once, checked against its checksum)."""
        if self._embedder is None:
            from reranker.embedder import TextEmbedder
            from reranker.models import packaged_embedder_dir

            want = self.dense["embedder_key"]
            path = self.embedder_dir or packaged_embedder_dir()
            if path is None:
                raise RetrieverUnavailableError(
                    f"OpenSearch index {self.index!r} is hybrid (embedder {want.get('name')!r}) "
                    "but no sentence embedder is installed here: pass the embedder it was "
                    "built with"
                )
            embedder = TextEmbedder(path, session_config=NO_SPINNING)
            have = embedder.key()
            if have.get("sha256") != want.get("sha256"):
                raise RetrieverUnavailableError(
                    f"OpenSearch index {self.index!r} holds vectors of embedder "
                    f"{want.get('name')!r} ({str(want.get('sha256'))[:12]}), not of {path} "
                    f"({str(have.get('sha256'))[:12]}): re-index it (`reranker index --backend "
                    "opensearch --overwrite`) or pass the embedder it was built with"
                )
            self._embedder = embedder
        return self._embedder

    def prepare(self) -> None:
        """What a server wants ready before its first query: the index's mapping read and, for
        a hybrid index, the embedder's session opened and run once (and checked against the
        index's record). Raises :class:`RetrieverUnavailableError` as a search would."""
        if self.dense is not None:
            self.embedder.embed(["prepare"])

    def _text(self, query: str) -> str:
        text = " ".join(query[:MAX_QUERY_CHARS].split()[:MAX_QUERY_WORDS])
        if not text:
            raise QueryError("query is empty")
        return text

    def _match(self, text: str) -> dict:
        match = {
            "query": text,  # a value, never parsed as query syntax
            "fields": [f"title^{TITLE_BOOST}", "all_text"],
            "type": "most_fields",
            "operator": "or",
        }
        if self.fuzziness:
            match["fuzziness"] = self.fuzziness
        return {"multi_match": match}

    def query_body(self, query: str, k: int) -> dict:
        """The BM25 request of ``query``'s top ``k`` (ties by product id)."""
        return {
            "size": k,
            "track_total_hits": False,
            "query": self._match(self._text(query)),
            "sort": [{"_score": "desc"}, {"product_id": "asc"}],
            "_source": ["product_id", "title", "attributes"],
        }

    def _search(self, body: dict) -> dict:
        try:
            # this retriever's caller reranks: skip an index's default search pipeline (a
            # `reranker opensearch-pipeline` one would oversample and rerank a second time)
            return self.client.search(
                index=self.index, body=body, params={"search_pipeline": "_none"}
            )
        except Exception as exc:
            raise describe(exc, self.options.url) from None

    def retrieve(self, query: str, k: int = 100) -> list[Candidate]:
        if k <= 0:
            return []
        try:
            text = self._text(query)
        except QueryError:
            return []
        if self.dense is not None:
            return self._hybrid(text, k)
        return _candidates(self._search(self.query_body(text, k))["hits"]["hits"], k)

    def _hybrid(self, text: str, k: int) -> list[Candidate]:
        """BM25's top ``k`` and the embedding's nearest ``k`` (two requests at once), then
        what each lacks of the other's products (at once again: the cosine of every product of
        either, one Painless script over their ids; BM25 of the nearest that BM25's top ``k``
        does not hold), fused here by the embedded index's formula."""
        dense = self.dense
        vector = [float(x) for x in self.embedder.embed([text])[0]]
        field = dense.get("field", VECTOR_FIELD)
        source = ["product_id", "title", "attributes"]
        lexical, near = self._both(
            {"size": k, "track_total_hits": False, "query": self._match(text), "_source": source},
            {"size": k, "query": {"knn": {field: {"vector": vector, "k": k}}}, "_source": source},
        )
        products = {h["_id"]: h["_source"] for h in near["hits"] + lexical["hits"]}
        if not products:
            return []
        bm25 = {h["_id"]: float(h["_score"]) for h in lexical["hits"]}
        ids, missing = list(products), [i for i in products if i not in bm25]
        cosines, more = self._both(
            {
                "size": len(ids),
                "query": {
                    "script_score": {
                        "query": {"ids": {"values": ids}},
                        "script": {"source": COSINE_SCRIPT, "params": {"v": vector, "f": field}},
                    }
                },
                "_source": False,
            },
            {
                "size": len(missing),
                "query": {
                    "bool": {"must": self._match(text), "filter": {"ids": {"values": missing}}}
                },
                "_source": False,
            }
            if missing
            else None,
        )
        bm25.update((h["_id"], float(h["_score"])) for h in (more or {}).get("hits", ()))
        cosine = {h["_id"]: float(h["_score"]) - 1.0 for h in cosines["hits"]}
        ids = [i for i in ids if i in cosine]  # (a document without a vector has none)
        scores = fuse(
            np.array([bm25.get(i, 0.0) for i in ids]),
            np.array([cosine[i] for i in ids]),
            float(dense.get("weight", DEFAULT_WEIGHT)),
            float(dense.get("min_similarity", DEFAULT_MIN_SIMILARITY)),
        )
        ranked = sorted(
            ((float(s), i) for s, i in zip(scores, ids, strict=True) if np.isfinite(s)),
            key=lambda t: (-t[0], products[t[1]]["product_id"]),  # ties by product id
        )
        return [
            Candidate(_product(products[i]), score, rank)
            for rank, (score, i) in enumerate(ranked[:k], start=1)
        ]

    def _both(self, first: dict, second: dict | None) -> tuple[dict, dict | None]:
        """Two searches at once (the second may be None); each one's ``hits``."""
        if second is None:
            return self._search(first)["hits"], None
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kd-opensearch")
        pending = self._pool.submit(self._search, second)
        try:
            a = self._search(first)["hits"]
        except BaseException:
            pending.cancel()  # the first one's error is the one reported
            raise
        return a, pending.result()["hits"]


def _product(src: dict) -> Product:
    fields = {a: v for a, v in (src.get("attributes") or {}).items() if v is not None}
    return Product(src["product_id"], src["title"], fields)


def _candidates(hits: list[dict], k: int) -> list[Candidate]:
    return [
        Candidate(_product(hit["_source"]), float(hit["_score"]), rank)
        for rank, hit in enumerate(hits[:k], start=1)
    ]


def index_catalog_opensearch(
    catalog: Catalog,
    options: ConnectionOptions,
    name: str,
    *,
    overwrite: bool = False,
    allow_failures: bool = False,
    chunk_size: int = 1000,
    progress: bool = False,
    documents: Iterable[dict] | None = None,
    rerank_fields: Sequence[str] | None = None,
    search_pipeline: str | None = None,
    bm25_k1: float = DEFAULT_K1,
    bm25_b: float = DEFAULT_B,
    embedder=None,
    dense_weight: float = DEFAULT_WEIGHT,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
) -> BulkReport:
    """Create a new physical index, bulk-load the catalog, refresh, and point alias ``name`` at
    it atomically.

    Per-document failures are collected by product id, never dropped. Unless ``allow_failures``,
    any failure aborts: the new index is deleted, the alias keeps pointing at the old one, and a
    :class:`BulkIndexError` lists the failed ids. ``rerank_fields``: also store each product's
    model text (see :func:`mapping`); ``search_pipeline``: the new index's default pipeline;
    ``bm25_k1``, ``bm25_b``: its BM25 parameters (the embedded index's defaults); ``embedder``
    (a :class:`reranker.embedder.TextEmbedder`): store every product's embedding, so retrieval
    is hybrid (the cluster needs the k-NN plugin), fused with ``dense_weight`` and
    ``min_similarity`` as the embedded index fuses (:mod:`reranker.index.dense`).
    """
    client = options.client()
    start = time.perf_counter()
    dense = None
    if embedder is not None:
        dense = dense_meta(embedder, weight=dense_weight, min_similarity=min_similarity)
        _check_knn(client, options.url)
    try:
        if client.indices.exists_alias(name=name):
            if not overwrite:
                raise IndexExistsError(
                    f"OpenSearch alias {name!r} already exists at {options.url}; pass --overwrite "
                    "to rebuild it (the alias moves atomically when the new index is ready)"
                )
            old = list(client.indices.get_alias(name=name))
        elif client.indices.exists(index=name):
            raise IndexExistsError(
                f"{name!r} at {options.url} is a concrete index, not an alias managed by "
                "kd-reranker; delete it or choose another --index name"
            )
        else:
            old = []
        physical = f"{name}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
        client.indices.create(
            index=physical,
            body=mapping(
                catalog.attribute_fields,
                rerank_fields,
                search_pipeline,
                k1=bm25_k1,
                b=bm25_b,
                dense=dense,
            ),
        )
    except IndexExistsError:
        raise
    except Exception as exc:
        if dense is not None and "knn_vector" in str(exc):  # no handler for the field type
            raise RetrieverUnavailableError(NO_KNN.format(url=options.url)) from None
        raise describe(exc, options.url) from None

    if documents is not None:
        docs = documents
    elif embedder is not None:
        try:
            vectors = embedder.embed([p.text() for p in catalog.products], progress=progress)
        except BaseException:
            client.indices.delete(index=physical, ignore_unavailable=True)
            raise
        docs = (
            document(p, rerank_fields, v) for p, v in zip(catalog.products, vectors, strict=True)
        )
    else:
        docs = (document(p, rerank_fields) for p in catalog.products)

    def actions() -> Iterator[dict]:
        for doc in docs:
            yield {"_index": physical, "_id": doc["product_id"], "_source": doc}

    failed: list[tuple[str, str]] = []
    indexed = 0
    bar = tqdm(total=len(catalog.products), desc="bulk indexing", unit="doc", disable=not progress)
    try:
        for ok, item in helpers.streaming_bulk(
            client,
            actions(),
            chunk_size=chunk_size,
            raise_on_error=False,
            raise_on_exception=False,
            max_retries=options.retries,
            refresh=False,
        ):
            info = item.get("index", item)
            if ok:
                indexed += 1
            else:
                err = info.get("error")
                reason = (
                    f"{err.get('type')}: {err.get('reason')}" if isinstance(err, dict) else str(err)
                )
                failed.append((str(info.get("_id")), reason))
            bar.update(1)
        bar.close()
        if failed and not allow_failures:
            raise BulkIndexError(
                f"{len(failed)} of {indexed + len(failed)} documents failed to index into "
                f"{options.url}: {_describe_failures(failed)}; the alias {name!r} was left "
                "unchanged (pass --skip-invalid to publish the rest)",
                tuple(failed),
            )
        client.indices.refresh(index=physical)
        actions_ = [{"remove": {"index": o, "alias": name}} for o in old]
        actions_.append({"add": {"index": physical, "alias": name}})
        client.indices.update_aliases(body={"actions": actions_})
        for o in old:
            client.indices.delete(index=o, ignore_unavailable=True)
    except BaseException as exc:  # Ctrl-C too: never leave a half-built index behind
        bar.close()
        try:
            client.indices.delete(index=physical, ignore_unavailable=True)
        except Exception:
            pass
        if isinstance(exc, BulkIndexError) or not isinstance(exc, Exception):
            raise
        raise describe(exc, options.url) from None
    return BulkReport(name, physical, indexed, tuple(failed), time.perf_counter() - start)


def has_knn(client: OpenSearch, url: str) -> bool | None:
    """Whether the cluster's nodes have the k-NN plugin (k-NN vector fields); None when the
    credentials may not list plugins (then creating the index tells)."""
    try:
        plugins = client.cat.plugins(format="json")
    except (os_exc.AuthorizationException, os_exc.AuthenticationException):
        return None
    except Exception as exc:
        raise describe(exc, url) from None
    return any(p.get("component") == "opensearch-knn" for p in plugins)


NO_KNN = (
    "OpenSearch at {url} has no k-NN plugin, which product embeddings need: install "
    "opensearch-knn (OpenSearch's full distribution has it) or index with --no-dense (BM25 alone)"
)


def _check_knn(client: OpenSearch, url: str) -> None:
    if has_knn(client, url) is False:
        raise RetrieverUnavailableError(NO_KNN.format(url=url))
