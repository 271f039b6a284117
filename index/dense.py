"""The dense half of the embedded first stage: one sentence-embedding vector per product,
stored with the index, and its fusion with BM25 (hybrid retrieval).

BM25 finds products that share the query's words; the embedder finds those that mean the
same with other words or spellings ("toliet seat elongated" finds toilet seats). A product's
hybrid score is ``bm25 / max(bm25 over the catalog) + weight * cosine``: both halves are then
on a 0–1 scale, and the weight (1.0) was chosen on train queries (training/REPORT.md). A product
that shares no token with the query is a candidate only when its cosine is at least
``min_similarity`` (0.4): without that floor a query with few true matches ("LVP") was filled
up to k with spray guns and air conditioners; on train queries the floor lowers the share of
judged products found by 0.0014 (0.722 → 0.721).
The embedder's files are copied into the index, so an index always embeds its queries with the
model that embedded its products.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reranker.embedder import CONFIG_FILE, TextEmbedder
from reranker.errors import IndexCorruptError

VECTORS_FILE = "dense_vectors.npy"
EMBEDDER_DIR = "embedder"
#: Weight of the cosine similarity against the max-normalised BM25 score.
DEFAULT_WEIGHT = 1.0
#: Products without any query token need at least this cosine similarity to be candidates.
DEFAULT_MIN_SIMILARITY = 0.4
FUSION = "bm25 / max(bm25) + weight * cosine"
#: The embedder's ONNX session does not spin between queries, so it never holds the cores a
#: reranker needs right after it.
NO_SPINNING = {"session.intra_op.allow_spinning": "0"}


def fuse(bm25: np.ndarray, cosine: np.ndarray, weight: float, min_similarity: float) -> np.ndarray:
    """The hybrid score (:data:`FUSION`) of products with these BM25 scores (the best product's
    among them) and cosine similarities; ``-inf`` for a product that is not a candidate (no
    query token, cosine below ``min_similarity``). The embedded index's and OpenSearch's."""
    top = float(bm25.max()) if len(bm25) else 0.0
    lexical = bm25 / top if top > 0 else np.zeros_like(bm25)
    fused = lexical + weight * cosine
    return np.where((bm25 > 0) | (cosine >= min_similarity), fused, -np.inf)


class DenseVectors:
    """Every product's unit vector (row ``i`` = the index's product ``i``) and the embedder that
    made them."""

    def __init__(
        self,
        vectors: np.ndarray,
        embedder_dir: Path,
        *,
        weight: float = DEFAULT_WEIGHT,
        min_similarity: float = DEFAULT_MIN_SIMILARITY,
    ) -> None:
        if vectors.ndim != 2:
            raise ValueError("vectors must be a matrix")
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.embedder_dir = Path(embedder_dir)
        self.weight = float(weight)
        self.min_similarity = float(min_similarity)
        self._embedder: TextEmbedder | None = None

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = TextEmbedder(self.embedder_dir, session_config=NO_SPINNING)
        return self._embedder

    @classmethod
    def build(
        cls,
        embedder: TextEmbedder,
        texts: Sequence[str],
        *,
        weight: float = DEFAULT_WEIGHT,
        min_similarity: float = DEFAULT_MIN_SIMILARITY,
        progress: bool = False,
    ) -> DenseVectors:
        vectors = embedder.embed(texts, progress=progress)
        dense = cls(vectors, embedder.directory, weight=weight, min_similarity=min_similarity)
        dense._embedder = embedder
        return dense

    def similarities(self, query: str) -> np.ndarray:
        """Cosine similarity of ``query`` to every product.

        Computed with ``einsum`` (numpy's own loop, one thread) rather than ``@``: the BLAS
        matrix-vector product is no faster here (memory-bound), and BLAS threads that keep
        spinning after it took the cores from the reranker that runs next (search p50 73 ms
        against 55 ms for the default on 2 cores, BENCHMARKS.md)."""
        return np.einsum("ij,j->i", self.vectors, self.embedder.embed([query])[0])

    def fuse(self, bm25: np.ndarray, query: str) -> np.ndarray:
        """Hybrid score of every product (see the module docstring); ``-inf`` for a product
        that is not a candidate (no query token, cosine below ``min_similarity``)."""
        return fuse(bm25, self.similarities(query), self.weight, self.min_similarity)

    # ---------------------------------------------------------------- persistence
    def save(self, gen: Path) -> dict:
        """Write the vectors (float16) and a copy of the embedder into generation ``gen``;
        returns the manifest entry."""
        np.save(gen / VECTORS_FILE, self.vectors.astype(np.float16), allow_pickle=False)
        target = gen / EMBEDDER_DIR
        if self.embedder_dir.resolve() != target.resolve():
            target.mkdir()
            config = self.embedder.config
            for name in (CONFIG_FILE, "tokenizer.json", config.file):
                shutil.copy2(self.embedder_dir / name, target / name)
        return {
            "vectors": VECTORS_FILE,
            "embedder": EMBEDDER_DIR,
            "embedder_key": self.embedder.key(),
            "dim": int(self.vectors.shape[1]),
            "weight": self.weight,
            "min_similarity": self.min_similarity,
            "fusion": FUSION,
        }

    @classmethod
    def load(cls, directory: Path, gen: Path, entry: dict, count: int) -> DenseVectors:
        try:
            vectors = np.load(gen / entry["vectors"], allow_pickle=False)
            dense = cls(
                vectors,
                gen / entry["embedder"],
                weight=float(entry["weight"]),
                min_similarity=float(entry["min_similarity"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptError(f"index at {directory} is corrupt: {exc}") from None
        if vectors.shape != (count, entry.get("dim")):
            raise IndexCorruptError(f"index at {directory} is corrupt: vectors do not agree")
        # the embedder's files were checked against the manifest's checksums; its session is
        # opened by the first query, so what only reads products or states never pays for it
        return dense
