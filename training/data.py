"""Judged pairs and catalog text for training and evaluation."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reranker.catalog import read_catalog
from reranker.errors import DataError


@dataclass
class JudgedPairs:
    query: list[str]
    product_id: list[str]
    text: list[str]
    relevance: np.ndarray


def catalog_texts(catalog: str | Path, fields: Sequence[str]) -> dict[str, str]:
    """Product id → model text (title + the given fields), for every product of a catalog."""
    return {p.id: p.text(fields) for p in read_catalog(catalog).products}


def read_pairs(path: str | Path, columns: Sequence[str]) -> pa.Table:
    """A Parquet pair file with at least ``columns``; one-line errors for anything else. A
    glob pattern (``scores/augmented-*.parquet``: shards) reads every match, in name order."""
    if any(ch in str(path) for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(str(path)))
        if not matches:
            raise DataError(f"no file matches {path}")
        return pa.concat_tables(
            [read_pairs(m, columns) for m in matches], promote_options="default"
        )
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"cannot read {path} as Parquet: {str(exc).splitlines()[0]}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {', '.join(missing)}; it has {', '.join(table.column_names)}"
        )
    if table.num_rows == 0:
        raise DataError(f"{path} has no rows")
    return table


def texts_for(ids: Sequence[str], texts: dict[str, str], source: str | Path) -> list[str]:
    """Model text of each id; a DataError names ids the catalog lacks."""
    unknown = sorted({p for p in ids if p not in texts})
    if unknown:
        raise DataError(
            f"{len(unknown)} product id(s) of {source} are not in the catalog, e.g. {unknown[:3]}"
        )
    return [texts[p] for p in ids]


def load_judged_pairs(
    path: str | Path, catalog: str | Path, fields: list[str], relevance_range=(1.0, 3.0)
) -> JudgedPairs:
    table = read_pairs(path, ("query", "product_id", "relevance"))
    pids = [str(p) for p in table.column("product_id").to_pylist()]
    relevance = np.asarray(table.column("relevance").to_pylist(), dtype=np.float64)
    soft_targets(relevance, *relevance_range)  # validates the range
    return JudgedPairs(
        query=table.column("query").to_pylist(),
        product_id=pids,
        text=texts_for(pids, catalog_texts(catalog, fields), path),
        relevance=relevance,
    )


def soft_targets(relevance: np.ndarray, low: float = 1.0, high: float = 3.0) -> np.ndarray:
    """Map graded relevance in [low, high] into [0, 1]: ``(relevance - low) / (high - low)``."""
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.size and (rel.min() < low or rel.max() > high):
        raise DataError(
            f"relevance must lie in [{low}, {high}]; found values from {rel.min()} to {rel.max()}"
        )
    return ((rel - low) / (high - low)).astype(np.float32)
