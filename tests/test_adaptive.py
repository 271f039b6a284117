"""Adaptive k: rerank as many candidates as fit a latency budget."""

import pytest

from reranker import BM25Index, CrossEncoder, SearchPipeline
from reranker.adaptive import LatencyModel


def test_k_for_a_budget_follows_the_cost_line():
    m = LatencyModel(fixed_ms=2.0, per_pair_ms=0.25)
    assert m.k_for(27.0, 200) == 100
    assert m.k_for(27.0, 40) == 40
    assert m.k_for(2.0, 200) == 0 and m.k_for(-5, 200) == 0
    assert m.predict_ms(100) == pytest.approx(27.0)
    assert m.split(27.0, 200) == (100, None)  # no second stage to shrink


def test_observed_calls_move_the_per_pair_cost():
    m = LatencyModel(fixed_ms=0.0, per_pair_ms=1.0, alpha=0.5)
    m.observe(10, 30.0)  # a busier machine: 3 ms a pair
    assert m.per_pair_ms == pytest.approx(2.0)
    m.observe(0, 1000.0)  # nothing scored: nothing learnt
    assert m.per_pair_ms == pytest.approx(2.0)


def test_calibration_fits_fixed_and_per_pair_costs():
    import time

    m = LatencyModel()
    m.calibrate(lambda n: time.sleep((1.0 + 0.1 * n) / 1e3))
    assert m.calibrated
    assert m.per_pair_ms == pytest.approx(0.1, abs=0.05)
    assert m.fixed_ms == pytest.approx(1.0, abs=0.8)


def test_pipeline_reranks_what_fits_and_keeps_first_stage_order_for_the_rest(
    built_index, tiny_model, monkeypatch
):
    model = CrossEncoder(tiny_model)
    model.calibrate_latency()
    model.latency.fixed_ms, model.latency.per_pair_ms, model.latency.alpha = 1.0, 1.0, 0.0
    pipeline = SearchPipeline(BM25Index.load(built_index), model, k=20, n=20)
    full = pipeline.search("cordless drill")
    assert full.reranked_k == full.candidates > 5
    cut = pipeline.search("cordless drill", budget_ms=1e9)
    assert cut.reranked_k == full.candidates
    # the pipeline's clock stands still, so retrieval takes 0 ms of the budget whatever the
    # machine's load: 1 ms fixed + 1 ms a pair leaves room for exactly 5 in 6 ms
    import types

    monkeypatch.setattr("reranker.pipeline.time", types.SimpleNamespace(perf_counter=lambda: 0.0))
    cut = pipeline.search("cordless drill", budget_ms=6.0)
    assert cut.reranked_k == 5 and cut.reranked
    k = cut.reranked_k
    head, tail = cut.results[:k], cut.results[k:]
    assert all(r.rerank_score is not None for r in head)
    assert [r.retrieval_rank for r in tail] == list(range(k + 1, full.candidates + 1))
    assert all(r.rerank_score is None for r in tail)
    assert sorted(r.retrieval_rank for r in head) == list(range(1, k + 1))
    none = pipeline.search("cordless drill", budget_ms=0.01)
    assert none.reranked_k == 0 and not none.reranked
    assert [r.retrieval_rank for r in none.results] == list(range(1, full.candidates + 1))


def test_search_cli_budget(built_index, tiny_model):
    from click.testing import CliRunner

    from reranker.cli import main

    args = [
        "search",
        "cordless drill",
        "--index-dir",
        str(built_index),
        "--model",
        str(tiny_model),
        "--json",
        "--budget-ms",
        "100000",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    import json

    body = json.loads(r.output)
    assert body["reranked_k"] == body["candidates"]
