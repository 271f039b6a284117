"""`python -m reranker.training.tune_embedder`: batches without a repeated query or product,
and a tuned folder that `reranker export-embedder` turns into the runtime's embedder."""

from __future__ import annotations

import json

import numpy as np

from reranker.embedder import TextEmbedder
from reranker.training.tune_embedder import (
    batch_negatives,
    batches,
    hard_negatives,
    positive_pairs,
    tune,
)


def test_batches_never_repeat_a_query_or_a_product():
    pairs = [(f"q{i % 5}", f"p{i % 7}") for i in range(40)]
    plan = batches(pairs, 4, seed=1)
    assert sorted(p for b in plan for p in b) == sorted(pairs)  # every pair once
    for b in plan:
        assert len(b) <= 4
        assert len({q for q, _ in b}) == len(b) and len({p for _, p in b}) == len(b)
    assert batches(pairs, 4, seed=1) == plan  # seeded


def test_hard_negatives_are_the_querys_own_low_judged_products(tmp_path, write_judged):
    products = {p: p for p in ("p1", "p2", "p3", "p4", "p5")}
    rows = [
        ("drill", "p1", 3.0),
        ("drill", "p4", 1.33),
        ("drill", "p5", 2.0),  # above the threshold: neither positive nor negative
        ("hose", "p2", 3.0),
        ("hose", "p1", 1.0),  # another query's positive
        ("held", "p3", 1.0),  # an excluded query
        ("seat", "p9", 1.0),  # not in the catalog
    ]
    judged = write_judged(tmp_path / "train.parquet", rows)
    negatives = hard_negatives(judged, products, max_relevance=1.67, exclude={"held"})
    assert negatives == {"drill": ["p4"], "hose": ["p1"]}
    rng = np.random.default_rng(0)
    # "hose"'s negative p1 is "drill"'s positive in the batch: never drawn as a negative there
    assert batch_negatives([("drill", "p1"), ("hose", "p2")], negatives, rng) == ["p4"]
    assert batch_negatives([("hose", "p2")], negatives, rng) == ["p1"]
    assert batch_negatives([("seat", "p3")], negatives, rng) == []


def test_tune_then_export(tmp_path, tiny_hf_model, write_judged):
    from reranker.training.export_embedder import export_embedder

    products = {"p1": "cordless drill", "p2": "garden hose", "p3": "toilet seat", "p4": "x"}
    rows = [
        ("drill", "p1", 3.0),
        ("hose", "p2", 2.67),
        ("seat", "p3", 3.0),
        ("seat", "p4", 1.0),  # below --min-relevance: not a positive
        ("held", "p1", 3.0),  # an excluded query
        ("drill", "p9", 3.0),  # not in the catalog
    ]
    judged = write_judged(tmp_path / "train.parquet", rows)
    pairs = positive_pairs(judged, products, min_relevance=2.5, exclude={"held"})
    assert pairs == [("drill", "p1"), ("hose", "p2"), ("seat", "p3")]
    out = tmp_path / "tuned"
    summary = tune(tiny_hf_model, pairs, products, out, batch_size=3, epochs=2, lr=1e-3,
                   max_length=16, progress=False, about={"base_model": "tiny"})  # fmt: skip
    assert summary["steps"] == 2 and summary["pairs"] == 3 and summary["queries"] == 3
    assert "hard_negatives" not in summary
    assert json.loads((out / "tuning.json").read_text())["steps"] == 2
    hard = tune(tiny_hf_model, pairs, products, tmp_path / "hard", batch_size=3, epochs=2,
                lr=1e-3, max_length=16, progress=False, negatives={"seat": ["p4"]})  # fmt: skip
    assert hard["hard_negatives"] == 2  # one per step: "seat" is in both batches
    base = export_embedder(tiny_hf_model, tmp_path / "e0", max_length=16, int8=False)
    tuned = export_embedder(out, tmp_path / "e1", max_length=16, int8=False)
    meta = json.loads((tuned / "embedder.json").read_text())["metadata"]
    assert meta["base_model"] == "tiny" and meta["tuning"]["steps"] == 2  # what it was tuned on
    a, b = TextEmbedder(base).embed(["drill"]), TextEmbedder(tuned).embed(["drill"])
    assert a.shape == b.shape and not np.allclose(a, b)  # the weights moved


def test_no_positive_pairs_is_a_one_line_error(tmp_path, catalog_csv, write_judged, monkeypatch):
    import sys

    import pytest

    from reranker.training import tune_embedder

    judged = write_judged(tmp_path / "j.parquet", [("drill", "nope", 3.0), ("drill", "p002", 1.0)])
    argv = ["tune_embedder", "--judged", str(judged), "--catalog", str(catalog_csv)]
    monkeypatch.setattr(sys, "argv", [*argv, "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="0 judged pair"):
        tune_embedder.main()
    assert not (tmp_path / "out").exists()
