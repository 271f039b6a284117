"""Unlabelled (query, product) pairs for the teacher to score.

Two sources, both deterministic for a seed:

(a) ``bm25``: for every training query, the BM25 top-``per_query`` products of the whole catalog
    that are not already judged for it: what the reranker actually sees at serving time.
(b) ``synthetic``: new queries made from catalog products. For a product drawn at random, the
    title is cut into words (lowercase letters only, at least 3 letters, no stop words, no
    numbers or units); a span of 1–3 consecutive words (length drawn with probabilities
    0.2/0.5/0.3) becomes the query, like the short head queries shoppers type ("deck over",
    "shower faucet"). Each new query brings its BM25 top-``per_query`` products.

Queries of ``exclude`` files (dev, held-back) are never used, not even as synthetic queries;
synthetic queries equal to a training query are dropped (source (a) covers them); pairs are
deduplicated. Output columns: query, product_id, source, origin_product_id (synthetic only),
bm25_rank, bm25_score.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from reranker.errors import RerankerError
from reranker.index import BM25Index
from reranker.training.data import read_pairs

STOP = frozenset(
    "the and for with in of to a an by on or at from as is set kit pack piece pieces inch "
    "ft in lb gal oz mm cm volt watt amp".split()
)
SPAN_LENGTHS = (1, 2, 3)
SPAN_PROBS = (0.2, 0.5, 0.3)
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class AugmentReport:
    output: Path
    pairs: int
    bm25_pairs: int
    synthetic_pairs: int
    synthetic_queries: int
    excluded_queries: int


def normalise(query: str) -> str:
    return " ".join(query.lower().split())


def title_words(title: str) -> list[str]:
    return [w for w in _WORD.findall(title.lower()) if len(w) >= 3 and w not in STOP]


def synthetic_query(title: str, rng: np.random.Generator) -> str | None:
    words = title_words(title)
    if not words:
        return None
    length = min(int(rng.choice(SPAN_LENGTHS, p=SPAN_PROBS)), len(words))
    start = int(rng.integers(0, len(words) - length + 1))
    return " ".join(words[start : start + length])


def read_queries(path: str | Path) -> pa.Table:
    return read_pairs(path, ("query", "product_id"))


def augment(
    index: BM25Index,
    train: str | Path,
    output: str | Path,
    *,
    exclude: Sequence[str | Path] = (),
    per_query: int = 20,
    synthetic_queries: int = 0,
    seed: int = 13,
    overwrite: bool = False,
    progress: bool = True,
) -> AugmentReport:
    output = Path(output)
    if output.exists() and not overwrite:
        raise RerankerError(f"{output} exists; pass --overwrite to replace it")
    rng = np.random.default_rng(seed)
    train_t = read_queries(train)
    excluded = {normalise(q) for f in exclude for q in read_queries(f).column("query").to_pylist()}
    judged = {
        (normalise(q), str(p))
        for q, p in zip(
            train_t.column("query").to_pylist(),
            train_t.column("product_id").to_pylist(),
            strict=True,
        )
    }
    train_queries = list(dict.fromkeys(train_t.column("query").to_pylist()))
    leaked = [q for q in train_queries if normalise(q) in excluded]
    if leaked:
        raise RerankerError(
            f"{len(leaked)} training queries are also in an excluded file, e.g. {leaked[:3]}; "
            "splits must not share queries"
        )
    rows: dict[tuple[str, str], dict] = {}

    def add(query: str, source: str, origin: str | None) -> int:
        added = 0
        for c in index.retrieve(query, per_query):
            key = (normalise(query), c.product.id)
            if key in judged or key in rows:
                continue
            rows[key] = {
                "query": query,
                "product_id": c.product.id,
                "source": source,
                "origin_product_id": origin,
                "bm25_rank": c.rank,
                "bm25_score": c.score,
            }
            added += 1
        return added

    bm25_pairs = 0
    for q in tqdm(train_queries, desc="bm25 candidates", unit="query", disable=not progress):
        bm25_pairs += add(q, "bm25", None)

    seen = {normalise(q) for q in train_queries} | excluded
    synthetic_pairs, made, attempts = 0, 0, 0
    bar = tqdm(
        total=synthetic_queries, desc="synthetic queries", unit="query", disable=not progress
    )
    while made < synthetic_queries:
        attempts += 1
        if attempts > 50 * synthetic_queries + 1000:
            raise RerankerError(
                f"could only make {made} distinct synthetic queries of {synthetic_queries} asked"
            )
        product = index.products_at([int(rng.integers(len(index)))])[0]
        q = synthetic_query(product.title, rng)
        if q is None or q in seen:
            continue
        seen.add(q)
        made += 1
        bar.update(1)
        synthetic_pairs += add(q, "synthetic", product.id)
    bar.close()

    table = pa.Table.from_pylist(
        list(rows.values()),
        schema=pa.schema(
            [
                ("query", pa.string()),
                ("product_id", pa.string()),
                ("source", pa.string()),
                ("origin_product_id", pa.string()),
                ("bm25_rank", pa.int32()),
                ("bm25_score", pa.float64()),
            ]
        ),
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(output)
    return AugmentReport(output, table.num_rows, bm25_pairs, synthetic_pairs, made, len(excluded))
