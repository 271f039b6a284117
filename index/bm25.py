"""Embedded first stage: BM25 built with rank-bm25's BM25Okapi, optionally fused with dense
vectors (:mod:`reranker.index.dense`: hybrid retrieval, the default of `reranker index`).

At build time rank-bm25 computes the statistics (idf, document lengths, average length); each
(term, product) weight is then precomputed with exactly BM25Okapi's arithmetic and stored as a
sparse term→postings matrix. A query adds the postings of its tokens in order, which gives the
same float64 scores as ``BM25Okapi.get_scores`` (the golden test checks this) in a fraction of the
time.
"""

from __future__ import annotations

import json
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rank_bm25 import BM25Okapi
from tqdm.auto import tqdm

from reranker.catalog import Catalog, Product
from reranker.embedder import TextEmbedder
from reranker.errors import IndexCorruptError
from reranker.index import store
from reranker.index.base import Candidate
from reranker.index.dense import DEFAULT_MIN_SIMILARITY, DEFAULT_WEIGHT, DenseVectors
from reranker.index.spelling import TermCorrector
from reranker.text import BM25Tokenizer, searchable_text
from reranker.tokens import ProductTokens

FORMAT = "kd-reranker-bm25"
FORMAT_VERSION = 1
#: Query tokens beyond this are ignored (a query is not a document).
MAX_QUERY_TOKENS = 256
#: BM25's term-frequency saturation and length normalisation. Product text (title + brand +
#: color + material) is short, and a word said twice ("Drill ... Drill Driver", a brand in the
#: title and the brand field) is not twice as relevant: a low ``k1`` counts a repeated word
#: nearly once, a low ``b`` does not punish a longer title for its detail. Chosen on train queries
#: (the 412 held-out ones and 1,500 others; rank-bm25's own 1.5 and 0.75 until the eighteenth
#: session): the share of a query's judged products in the hybrid top 100 rose 0.758 → 0.775
#: held-out, 0.740 → 0.757 on the others, and every (k1, b) in 0.2–0.5 × 0.15–0.5 is within
#: 0.003 of the best (training/REPORT.md, eighteenth session).
DEFAULT_K1 = 0.3
DEFAULT_B = 0.4


def _load_product_store(directory: Path, gen: Path, key: dict):
    """The per-product store an index keeps for one reranker (token ids, or a late student's
    encoder states); ``None``, with a warning, for states in a format this version no longer
    reads (the index still searches; rerankers then encode products on the fly)."""
    from reranker.late import ProductStates

    kind = key.get("kind")
    try:
        if kind == ProductStates.kind:
            return ProductStates.load(gen, key)
        if str(kind).startswith("late-states"):
            warnings.warn(
                f"index at {directory}: its stored product states ({kind}) are of an older "
                f"format ({ProductStates.kind} now) and are not used; run `reranker index` again",
                stacklevel=3,
            )
            return None
        return ProductTokens.load(gen, key)
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"index at {directory} is corrupt: {exc}") from None


class BM25Index:
    """In-process BM25 retriever over a catalog; implements :class:`~reranker.index.Retriever`.

    >>> index = BM25Index.load("demo/index")  # doctest: +SKIP
    >>> [c.product.title for c in index.retrieve("cordless drill", k=3)]  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        vocab: Sequence[str],
        term_ptr: np.ndarray,
        postings_doc: np.ndarray,
        postings_weight: np.ndarray,
        id_rank: np.ndarray,
        products: pa.Table,
        attribute_fields: Sequence[str],
        tokenizer: BM25Tokenizer,
        params: dict,
        manifest: dict | None = None,
    ) -> None:
        self.term_index = {t: i for i, t in enumerate(vocab)}
        self.term_ptr = term_ptr
        self.postings_doc = postings_doc
        self.postings_weight = postings_weight
        self.id_rank = id_rank
        self.products = products
        self.ids: list[str] = products.column("id").to_pylist()
        self.attribute_fields = tuple(attribute_fields)
        self.tokenizer = tokenizer
        self.params = params
        self.manifest = manifest or {}
        #: Product token ids for one model (``reranker index --model``), or None.
        self.product_tokens: ProductTokens | None = None
        #: Every product's embedding, fused with BM25 by :meth:`retrieve`; None: BM25 only.
        self.dense: DenseVectors | None = None
        #: Replace query words no product has by the nearest word the catalog has
        #: (:mod:`reranker.index.spelling`); False: search the words as typed.
        self.correct_spelling = True
        self._corrector: TermCorrector | None = None

    def __len__(self) -> int:
        return len(self.ids)

    # ---------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        catalog: Catalog,
        *,
        tokenizer: BM25Tokenizer | None = None,
        k1: float = DEFAULT_K1,
        b: float = DEFAULT_B,
        epsilon: float = 0.25,
        progress: bool = False,
    ) -> BM25Index:
        tokenizer = tokenizer or BM25Tokenizer()
        products = catalog.products
        corpus = [
            tokenizer(searchable_text(p.title, p.fields))
            for p in tqdm(products, desc="tokenizing", unit="product", disable=not progress)
        ]
        if not any(corpus):
            raise IndexCorruptError("no product has any indexable text")
        bm25 = BM25Okapi(corpus, k1=k1, b=b, epsilon=epsilon)
        vocab = sorted(bm25.idf)
        term_of = {t: i for i, t in enumerate(vocab)}
        terms, docs, tfs = [], [], []
        for d, freqs in enumerate(
            tqdm(bm25.doc_freqs, desc="weighting", unit="product", disable=not progress)
        ):
            for t, tf in freqs.items():
                terms.append(term_of[t])
                docs.append(d)
                tfs.append(tf)
        terms_a = np.asarray(terms, dtype=np.int64)
        docs_a = np.asarray(docs, dtype=np.int32)
        tf_a = np.asarray(tfs, dtype=np.int64)
        idf = np.asarray([bm25.idf[t] for t in vocab], dtype=np.float64)
        doc_len = np.asarray(bm25.doc_len)[docs_a]
        # Exactly BM25Okapi.get_scores' expression, evaluated per posting.
        weight = idf[terms_a] * (
            tf_a * (bm25.k1 + 1) / (tf_a + bm25.k1 * (1 - bm25.b + bm25.b * doc_len / bm25.avgdl))
        )
        order = np.lexsort((docs_a, terms_a))
        term_ptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.add.at(term_ptr, terms_a + 1, 1)
        term_ptr = np.cumsum(term_ptr)
        ids = [p.id for p in products]
        id_rank = np.empty(len(ids), dtype=np.int64)
        id_rank[np.argsort(np.asarray(ids, dtype=object), kind="stable")] = np.arange(len(ids))
        columns = {"id": ids, "title": [p.title for p in products]}
        for a in catalog.attribute_fields:
            columns[a] = [p.fields.get(a) for p in products]
        table = pa.table({k: pa.array(v, type=pa.string()) for k, v in columns.items()})
        params = {
            "k1": k1,
            "b": b,
            "epsilon": epsilon,
            "avgdl": float(bm25.avgdl),
            "implementation": f"rank-bm25 {version('rank-bm25')} BM25Okapi",
        }
        manifest = {
            "catalog": {
                "path": catalog.path,
                "format": catalog.format,
                "sha256": catalog.sha256,
                "id_field": catalog.id_field,
                "title_field": catalog.title_field,
                "attribute_fields": list(catalog.attribute_fields),
                "skipped": len(catalog.skipped),
            }
        }
        return cls(
            vocab=vocab,
            term_ptr=term_ptr,
            postings_doc=docs_a[order],
            postings_weight=weight[order],
            id_rank=id_rank,
            products=table,
            attribute_fields=catalog.attribute_fields,
            tokenizer=tokenizer,
            params=params,
            manifest=manifest,
        )

    # ---------------------------------------------------------------- persistence
    def save(
        self, directory: str | Path, *, overwrite: bool = False, skipped: str | None = None
    ) -> Path:
        """Write the index atomically; the previous index stays usable until the new one is live.

        ``skipped`` (JSON text) lists catalog rows left out; it is stored as ``skipped.json``.
        """
        with store.Generation(directory, overwrite=overwrite) as gen:
            self.generation = gen.path
            if skipped is not None:
                (gen.path / "skipped.json").write_text(skipped)
            pq.write_table(self.products, gen.path / "products.parquet")
            tokens_key = self.product_tokens.save(gen.path) if self.product_tokens else None
            dense = self.dense.save(gen.path) if self.dense is not None else None
            vocab = sorted(self.term_index, key=self.term_index.__getitem__)
            (gen.path / "vocab.json").write_text(json.dumps(vocab))
            for name, arr in {
                "term_ptr": self.term_ptr,
                "postings_doc": self.postings_doc,
                "postings_weight": self.postings_weight,
                "id_rank": self.id_rank,
            }.items():
                np.save(gen.path / f"{name}.npy", arr, allow_pickle=False)
            gen.write_manifest(
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "count": len(self),
                    "attribute_fields": list(self.attribute_fields),
                    "tokenizer": self.tokenizer.settings(),
                    "bm25": self.params,
                    **self.manifest,
                    "product_tokens": tokens_key,
                    "dense": dense,
                }
            )
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path, *, verify: bool = True) -> BM25Index:
        gen, manifest = store.open_current(directory, verify=verify)
        if manifest.get("format") != FORMAT:
            raise IndexCorruptError(f"{directory} is not a kd-reranker BM25 index")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IndexCorruptError(
                f"index at {directory} has format version {manifest.get('format_version')}, "
                f"this kd-reranker reads version {FORMAT_VERSION}; rebuild it with `reranker index`"
            )
        try:
            arrays = {
                n: np.load(gen / f"{n}.npy", allow_pickle=False)
                for n in ("term_ptr", "postings_doc", "postings_weight", "id_rank")
            }
            vocab = json.loads((gen / "vocab.json").read_text())
            products = pq.read_table(gen / "products.parquet")
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"index at {directory} is corrupt: {exc}") from None
        if len(arrays["term_ptr"]) != len(vocab) + 1 or products.num_rows != manifest["count"]:
            raise IndexCorruptError(f"index at {directory} is corrupt: sizes do not agree")
        index = cls(
            vocab=vocab,
            products=products,
            attribute_fields=manifest["attribute_fields"],
            tokenizer=BM25Tokenizer.from_settings(manifest["tokenizer"]),
            params=manifest["bm25"],
            manifest=manifest,
            **arrays,
        )
        if manifest.get("product_tokens"):
            index.product_tokens = _load_product_store(directory, gen, manifest["product_tokens"])
            if index.product_tokens is not None and len(index.product_tokens) != len(index):
                raise IndexCorruptError(f"index at {directory} is corrupt: token ids do not agree")
        if manifest.get("dense"):
            index.dense = DenseVectors.load(directory, gen, manifest["dense"], len(index))
        return index

    def add_dense(
        self,
        embedder: TextEmbedder,
        *,
        weight: float = DEFAULT_WEIGHT,
        min_similarity: float = DEFAULT_MIN_SIMILARITY,
        progress: bool = False,
    ) -> None:
        """Embed every product (its model text: title and labelled attributes) with
        ``embedder``, so that :meth:`retrieve` fuses BM25 with the query's cosine similarity."""
        texts = [p.text() for p in self.products_at(np.arange(len(self)))]
        self.dense = DenseVectors.build(
            embedder, texts, weight=weight, min_similarity=min_similarity, progress=progress
        )

    def add_product_tokens(self, model, progress: bool = False) -> None:
        """Store what ``model`` (a :class:`CrossEncoder`) keeps for every product so that
        reranking with it only works on the query: token ids, or a late-interaction student's
        encoder states."""
        texts = [p.text(model.config.fields) for p in self.products_at(np.arange(len(self)))]
        self.product_tokens = model.build_store(texts, progress=progress)

    def tokens_for(self, key: dict) -> ProductTokens | None:
        """The stored token ids (or states) if made for a model with this ``token_key``."""
        t = self.product_tokens
        return t if t is not None and t.key == key else None

    # ---------------------------------------------------------------- search
    def query_tokens(self, query: str) -> list[str]:
        """The query's tokens as searched: a word no product has is replaced by the nearest
        word the catalog has, if one is near enough, or by the two it is written from (unless
        :attr:`correct_spelling` is False)."""
        return self._searched(query)[0]

    def corrections(self, query: str) -> dict[str, str]:
        """The query's words searched as other words, e.g. ``{"stainles": "stainless",
        "walloven": "wall oven"}``: for a "showing results for" line."""
        return self._searched(query)[1]

    def _searched(self, query: str) -> tuple[list[str], dict[str, str]]:
        words = self.tokenizer.words(query)[:MAX_QUERY_TOKENS]
        tokens = [self.tokenizer.stem(w) for w in words]
        if not self.correct_spelling or all(t in self.term_index for t in tokens):
            return tokens, {}
        corrector = self._spelling()
        searched: list[str] = []
        corrected: dict[str, str] = {}
        for word, token in zip(words, tokens, strict=True):
            nearest = () if token in self.term_index else corrector.correct(word)  # unstemmed
            if nearest:
                corrected[word] = " ".join(nearest)
            searched.extend([self.tokenizer.stem(w) for w in nearest] if nearest else [token])
        return searched, corrected

    def prepare_spelling(self) -> None:
        """Make the spelling corrector's table now rather than at the first misspelt query
        (~1 s for the demo catalog): for a server."""
        if self.correct_spelling:
            self._spelling().prepare()

    def prepare(self) -> None:
        """What a server wants ready before its first query: the spelling table and, in a
        hybrid index, the embedder's session (opened and run once)."""
        self.prepare_spelling()
        if self.dense is not None:
            self.dense.embedder.embed(["prepare"])

    def _spelling(self) -> TermCorrector:
        """The corrector over the catalog's words before stemming (a misspelling is a spelling
        of the word, not of its stem: "stainles" is one edit from "stainless", whose stem is
        indexed, but its own stem "stainl" is one from "stain"), each with the number of
        products that hold it."""
        if self._corrector is None:
            columns = [
                self.products.column(c).to_pylist() for c in ("title", *self.attribute_fields)
            ]
            frequency: Counter[str] = Counter()
            for title, *values in zip(*columns, strict=True):
                fields = dict(zip(self.attribute_fields, values, strict=True))
                frequency.update(set(self.tokenizer.words(searchable_text(title, fields))))
            self._corrector = TermCorrector(frequency)
        return self._corrector

    def scores(self, query: str | Sequence[str]) -> np.ndarray:
        """BM25 score of every product (same values as ``BM25Okapi.get_scores``)."""
        tokens = self.query_tokens(query) if isinstance(query, str) else list(query)
        return self._accumulate(tokens)[0]

    def _accumulate(self, tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Scores of every product (postings added in query-token order, as rank-bm25 sums) and
        the rows that contain at least one token, ascending."""
        scores = np.zeros(len(self.ids), dtype=np.float64)
        spans = []
        for t in tokens:
            i = self.term_index.get(t)
            if i is not None:
                lo, hi = self.term_ptr[i], self.term_ptr[i + 1]
                scores[self.postings_doc[lo:hi]] += self.postings_weight[lo:hi]
                spans.append((lo, hi))
        distinct = set(spans)
        if len(distinct) == 1:  # postings are sorted by row: already the matched rows
            lo, hi = spans[0]
            return scores, self.postings_doc[lo:hi]
        touched = np.zeros(len(self.ids), dtype=bool)
        for lo, hi in distinct:
            touched[self.postings_doc[lo:hi]] = True
        return scores, np.flatnonzero(touched)

    def retrieve(self, query: str, k: int = 100) -> list[Candidate]:
        """Top-``k`` products, ties by product id: by BM25 among those containing at least one
        query token or, with dense vectors, by the hybrid score among those and the products
        close enough in meaning (:mod:`reranker.index.dense`; a query whose words are all
        unknown to BM25, e.g. misspelt, is then found by meaning alone). A query without any
        token finds nothing."""
        query_tokens = self.query_tokens(query)
        tokens = [t for t in query_tokens if t in self.term_index]
        if k <= 0 or not (tokens or (self.dense is not None and query_tokens)):
            return []
        if self.dense is None:
            scores, matched = self._accumulate(tokens)
        else:
            lexical = self._accumulate(tokens)[0] if tokens else np.zeros(len(self))
            scores = self.dense.fuse(lexical, query)
            matched = np.flatnonzero(np.isfinite(scores))
        if len(matched) > k:
            s = scores[matched]
            kth = np.partition(s, len(s) - k)[len(s) - k]
            matched = matched[s >= kth]
        order = np.lexsort((self.id_rank[matched], -scores[matched]))[:k]
        top = matched[order]
        products = self.products_at(top)
        return [
            Candidate(p, float(scores[d]), rank, int(d))
            for rank, (p, d) in enumerate(zip(products, top, strict=True), start=1)
        ]

    def products_at(self, rows: Sequence[int] | np.ndarray) -> list[Product]:
        """The products stored at the given row positions, in that order."""
        records = self.products.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()
        return [
            Product(
                r["id"], r["title"], {a: r[a] for a in self.attribute_fields if r[a] is not None}
            )
            for r in records
        ]
