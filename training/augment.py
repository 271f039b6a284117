"""Unlabelled (query, product) pairs for the teacher to score.

Two sources, both deterministic for a seed:

(a) ``bm25``: for every training query, ``per_query`` products of the BM25 top-``depth`` of the
    whole catalog that are not already judged for it: what the reranker actually sees at serving
    time. The top ``head`` ranks are always kept; the rest is a seeded random draw from ranks
    ``head + 1 .. depth``, so the set holds the lexical look-alikes deep in the list (drill bits
    for "cordless drill") and not only the first page. By default ``depth = head = per_query``
    (the plain top-``per_query``).
(b) ``synthetic``: new queries made from catalog products, each bringing its candidates as in
    (a). For a product drawn at random, the title is cut into words (lowercase letters only, at
    least 3 letters, no stop words, no numbers or units). Two kinds, drawn with probability
    ``1 - attribute_share`` and ``attribute_share``:
    - ``span``: a span of 1–3 consecutive title words (length drawn with probabilities
      0.2/0.5/0.3), like the short head queries shoppers type ("deck over", "shower faucet");
    - ``attribute``: one of the product's color, material or brand values (its first part before
      "/" or ",", at most two words) followed by a 1–2 word title span that does not repeat it,
      like "white toilet seat" or "brass door knob" (falls back to ``span`` when the product
      has no usable attribute).

With ``shuffle_queries`` the rows are grouped by query in a seeded random order (both sources
mixed), so that the first rows of the file, e.g. the part a long labelling run has finished, are
a fair sample of the whole. Queries of ``exclude`` files (dev, held-back) are never used, not
even as synthetic queries; synthetic queries equal to a training query are dropped (source (a)
covers them); pairs are deduplicated. Output columns: query, product_id, source,
origin_product_id (synthetic only), bm25_rank, bm25_score.
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
ATTRIBUTE_FIELDS = ("color", "material", "brand")
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class AugmentReport:
    output: Path
    pairs: int
    bm25_pairs: int
    synthetic_pairs: int
    synthetic_queries: int
    excluded_queries: int
    attribute_queries: int = 0


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


def attribute_query(product, rng: np.random.Generator) -> str | None:
    """An attribute value (color, material or brand) and a 1–2 word title span, or None."""
    values = []
    for name in ATTRIBUTE_FIELDS:
        raw = product.fields.get(name)
        if raw:
            words = _WORD.findall(re.split(r"[/,]", str(raw).lower())[0])[:2]
            if words and all(len(w) >= 3 for w in words):
                values.append(words)
    if not values:
        return None
    attr = values[int(rng.integers(len(values)))]
    words = [w for w in title_words(product.title) if w not in attr]
    if not words:
        return None
    length = min(int(rng.choice((1, 2), p=(0.4, 0.6))), len(words))
    start = int(rng.integers(0, len(words) - length + 1))
    return " ".join(attr + words[start : start + length])


def read_queries(path: str | Path) -> pa.Table:
    return read_pairs(path, ("query", "product_id"))


def augment(
    index: BM25Index,
    train: str | Path,
    output: str | Path,
    *,
    exclude: Sequence[str | Path] = (),
    per_query: int = 20,
    depth: int | None = None,
    head: int | None = None,
    synthetic_queries: int = 0,
    attribute_share: float = 0.0,
    shuffle_queries: bool = False,
    seed: int = 13,
    overwrite: bool = False,
    progress: bool = True,
) -> AugmentReport:
    output = Path(output)
    if output.exists() and not overwrite:
        raise RerankerError(f"{output} exists; pass --overwrite to replace it")
    depth = per_query if depth is None else depth
    head = min(per_query, depth) if head is None else head
    if not 0 <= head <= per_query <= depth:
        raise RerankerError(
            f"need 0 <= head <= per-query <= depth; got head {head}, per-query {per_query}, "
            f"depth {depth}"
        )
    if not 0.0 <= attribute_share <= 1.0:
        raise RerankerError(f"attribute share must lie in [0, 1], not {attribute_share}")
    rng = np.random.default_rng(seed)
    draw = np.random.default_rng([seed, 1])  # the deep-rank draw, apart from the query draw
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
        fresh = [
            c
            for c in index.retrieve(query, depth)
            if (normalise(query), c.product.id) not in judged
            and (normalise(query), c.product.id) not in rows
        ]
        top, deep = fresh[:head], fresh[head:]
        if len(top) + len(deep) > per_query:
            keep = np.sort(draw.choice(len(deep), per_query - len(top), replace=False))
            deep = [deep[i] for i in keep]
        for c in top + deep:
            key = (normalise(query), c.product.id)
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
    synthetic_pairs, made, attempts, attribute_made = 0, 0, 0, 0
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
        kind_attribute = attribute_share > 0 and rng.random() < attribute_share
        q = attribute_query(product, rng) if kind_attribute else None
        kind_attribute = q is not None
        if q is None:
            q = synthetic_query(product.title, rng)
        if q is None or q in seen:
            continue
        seen.add(q)
        made += 1
        attribute_made += kind_attribute
        bar.update(1)
        synthetic_pairs += add(q, "synthetic", product.id)
    bar.close()

    records = list(rows.values())
    if shuffle_queries:  # whole queries in a seeded random order: any prefix is a fair sample
        queries = list(dict.fromkeys(r["query"] for r in records))
        rank = {q: i for i, q in enumerate(np.random.default_rng([seed, 2]).permutation(queries))}
        records.sort(key=lambda r: rank[r["query"]])  # stable: a query's rows keep their order
    table = pa.Table.from_pylist(
        records,
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
    return AugmentReport(
        output, table.num_rows, bm25_pairs, synthetic_pairs, made, len(excluded), attribute_made
    )
