"""Judged pairs and catalog text for training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from reranker.catalog import read_catalog


@dataclass
class JudgedPairs:
    query: list[str]
    product_id: list[str]
    text: list[str]
    relevance: np.ndarray


def catalog_texts(catalog: str, fields: list[str]) -> dict[str, str]:
    """Product id → model text (title + the given fields), for every product of a catalog."""
    return {p.id: p.text(fields) for p in read_catalog(catalog).products}


def load_judged_pairs(path: str, catalog: str, fields: list[str]) -> JudgedPairs:
    rows = pq.read_table(path).to_pylist()
    texts = catalog_texts(catalog, fields)
    pids = [str(r["product_id"]) for r in rows]
    return JudgedPairs(
        query=[r["query"] for r in rows],
        product_id=pids,
        text=[texts[p] for p in pids],
        relevance=np.array([r["relevance"] for r in rows], dtype=np.float64),
    )


def soft_targets(relevance: np.ndarray, low: float = 1.0, high: float = 3.0) -> np.ndarray:
    """Map graded relevance in [low, high] into [0, 1]: ``(relevance - low) / (high - low)``."""
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.size and (rel.min() < low or rel.max() > high):
        raise ValueError(
            f"relevance must lie in [{low}, {high}]; found values from {rel.min()} to {rel.max()}"
        )
    return ((rel - low) / (high - low)).astype(np.float32)
