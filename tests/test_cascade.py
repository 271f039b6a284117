"""The two-stage model: a late student on every candidate, a cross-encoder on its best few."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from test_late import late_student  # noqa: F401 (the tiny late student, a fixture)

from reranker import BM25Index, SearchPipeline
from reranker.catalog import read_catalog
from reranker.cli import main
from reranker.errors import ModelError
from reranker.index.build import index_catalog
from reranker.models import open_model
from reranker.serve import ServiceSettings, create_app


@pytest.fixture(scope="module")
def cross_brand(tmp_path_factory, tiny_hf_model):
    """A tiny cross-encoder reading the same product text as the late student (title + brand)."""
    from reranker.training.export import export_model

    out = tmp_path_factory.mktemp("cross") / "cross"
    return export_model(tiny_hf_model, out, max_length=32, fields=("brand",))


def _cascade_cli(first, second, out, *options):
    """`reranker cascade FIRST SECOND --output OUT OPTIONS...`"""
    args = ["cascade", str(first), str(second), "--output", str(out), *options]
    return CliRunner().invoke(main, args, env={"RERANKER_MODEL": ""})


@pytest.fixture(scope="module")
def cascade_dir(tmp_path_factory, late_student, cross_brand):  # noqa: F811
    out = tmp_path_factory.mktemp("cascade") / "two-stage"
    result = _cascade_cli(late_student[1], cross_brand, out, "--second-k", "3")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def texts(catalog_csv):
    return [p.text(("brand",)) for p in read_catalog(catalog_csv).products[:9]]


def test_head_is_ordered_by_the_second_stage_and_the_rest_keep_the_first_order(cascade_dir, texts):
    cascade = open_model(cascade_dir, variant="fp32")
    assert type(cascade).__name__ == "CascadeReranker" and cascade.name == "two-stage"
    cfg = json.loads((cascade_dir / "reranker.json").read_text())
    assert not os.path.isabs(cfg["first"])  # relative: the pair of folders can move together
    first = cascade.first.score("cordless drill", texts)
    second = cascade.second.score("cordless drill", texts)
    got = cascade.score("cordless drill", texts)
    by_first = list(np.argsort(-first.raw, kind="stable"))
    head, rest = by_first[:3], by_first[3:]
    final = list(np.argsort(-got.raw, kind="stable"))
    assert final[:3] == sorted(head, key=lambda i: -second.raw[i])
    assert final[3:] == rest
    assert got.raw[head] == pytest.approx(second.raw[head], abs=1e-5)
    assert got.probability[head] == pytest.approx(second.probability[head], abs=1e-5)
    assert got.probability[rest] == pytest.approx(first.probability[rest], abs=1e-6)
    assert got.raw[rest].max() < got.raw[head].min()
    from reranker.models import model_fields

    assert model_fields(cascade_dir) == ("brand",)  # what OpenSearch's rerank_text holds
    few = cascade.score("cordless drill", texts[:2])  # fewer than second_k: all rescored
    assert few.raw == pytest.approx(cascade.second.score("cordless drill", texts[:2]).raw)


def test_pairs_of_several_queries_score_as_each_query_alone(cascade_dir, texts):
    cascade = open_model(cascade_dir, variant="fp32")
    queries = ["garden hose", "cordless drill"] * (len(texts) // 2) + ["garden hose"]
    got = cascade.score_pairs(queries, texts)
    for q in set(queries):
        rows = [i for i, x in enumerate(queries) if x == q]
        alone = cascade.score(q, [texts[i] for i in rows])
        assert got.raw[rows] == pytest.approx(alone.raw, abs=1e-6)


def test_index_search_and_service_use_the_first_stage_states(cascade_dir, catalog_csv, tmp_path):
    cascade = open_model(cascade_dir, variant="fp32")
    index_catalog(catalog_csv, tmp_path / "idx", model=cascade)
    index = BM25Index.load(tmp_path / "idx")
    assert index.tokens_for(cascade.first.token_key) is not None  # the late student's states
    response = SearchPipeline(index, cascade, k=20, n=20).search("cordless drill")
    assert response.reranked and response.model == "two-stage"
    cands = index.retrieve("cordless drill", 20)
    fresh = open_model(cascade_dir, variant="fp32")
    raw = fresh.score("cordless drill", [c.product.text(("brand",)) for c in cands]).raw
    by_id = {c.product.id: float(s) for c, s in zip(cands, raw, strict=True)}
    for r in response.results:
        assert r.rerank_score == pytest.approx(by_id[r.product_id], abs=1e-5)

    served = open_model(cascade_dir, variant="fp32")
    app = create_app(served, index, ServiceSettings(k=20, n=20))
    with TestClient(app) as c:
        body = c.post("/search", json={"query": "cordless drill"}).json()
        assert [r["product_id"] for r in body["results"]] == [
            r.product_id for r in response.results
        ]
        # each product's probability is that of the stage that placed it, as in the pipeline
        got = [r["rerank_probability"] for r in body["results"]]
        assert got == pytest.approx([r.rerank_probability for r in response.results], abs=1e-5)
    assert served.first.stored_hits > 0 and served.encoded_texts == 0  # states, not encoding

    env = dict(os.environ, RERANKER_MODEL=str(cascade_dir))
    result = CliRunner().invoke(
        main, ["search", "garden hose", "--index-dir", str(tmp_path / "idx")], env=env
    )
    assert result.exit_code == 0 and "reranked by two-stage" in result.output, result.output


def test_a_cascade_over_a_float_query_late_student_uses_its_int8_graph(
    late_student,  # noqa: F811
    cross_brand,
    tmp_path,
):
    """The shipped late profile computes its query in float32 (int8-float-query, its
    default); a cascade written over it picks the student's dynamic-int8 graph unless told."""
    from reranker.late import FLOAT_QUERY
    from reranker.training.ship import ship

    late = ship(late_student[1], tmp_path / "late", "# card\n")
    assert open_model(late).variant == FLOAT_QUERY
    r = _cascade_cli(late, cross_brand, tmp_path / "c", "--second-k", "3")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c" / "reranker.json").read_text())["first_variant"] == "int8"
    assert open_model(tmp_path / "c").first.variant == "int8"
    r = _cascade_cli(late, cross_brand, tmp_path / "f", "--first-variant", FLOAT_QUERY)
    assert r.exit_code == 0, r.output
    assert open_model(tmp_path / "f").first.variant == FLOAT_QUERY
    # a variant the caller names wins where the stage has it
    assert open_model(tmp_path / "c", variant=FLOAT_QUERY).first.variant == FLOAT_QUERY
    r = _cascade_cli(late, cross_brand, tmp_path / "x", "--first-variant", "fp16")
    assert r.exit_code != 0 and "no 'fp16' variant" in r.output, r.output
    assert not (tmp_path / "x").exists()


def test_latency_of_a_cascade_counts_both_stages(cascade_dir):
    cascade = open_model(cascade_dir, variant="fp32")
    latency = cascade.calibrate_latency()
    assert latency.calibrated
    first, second = cascade.first.latency, cascade.second.latency
    assert latency.predict_ms(50) == pytest.approx(first.predict_ms(50) + second.predict_ms(3))
    budget = latency.predict_ms(40)
    k, m = latency.split(budget, 100)
    assert 40 <= k <= 100 and k == latency.k_for(budget, 100) and 0 <= m <= 3
    assert first.predict_ms(k) + second.predict_ms(m) <= budget + 1e-9
    assert latency.k_for(0.0, 100) == 0


def test_bad_cascades_are_refused(late_student, tiny_model, cross_brand, cascade_dir, tmp_path):  # noqa: F811
    from reranker.cascade import write_cascade

    with pytest.raises(ModelError, match="different product fields"):
        write_cascade(tmp_path / "a", late_student[1], tiny_model, 5, None)  # brand+color
    with pytest.raises(ModelError, match="itself a cascade"):
        write_cascade(tmp_path / "b", cascade_dir, cross_brand, 5, None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing left
    bad = tmp_path / "c"
    bad.mkdir()
    cfg = json.loads((cascade_dir / "reranker.json").read_text())
    (bad / "reranker.json").write_text(json.dumps({**cfg, "second_k": 0}))
    with pytest.raises(ModelError, match="second_k"):
        open_model(bad)
    (bad / "reranker.json").write_text(json.dumps({**cfg, "first_weight": -1}))
    with pytest.raises(ModelError, match="first_weight must be a number"):
        open_model(bad)


def test_blended_head_and_its_calibration(
    late_student,  # noqa: F811
    cross_brand,
    texts,
    catalog_csv,
    tmp_path,
    write_judged,
):
    out = tmp_path / "blend"
    r = _cascade_cli(late_student[1], cross_brand, out, "--second-k", "3", "--first-weight", "0.5")
    assert r.exit_code == 0 and "(+ 0.5 x the first's score)" in r.output, r.output
    cascade = open_model(out, variant="fp32")
    first = cascade.first.score("cordless drill", texts)
    second = cascade.second.score("cordless drill", texts)
    got = cascade.score("cordless drill", texts)
    head = list(np.argsort(-first.raw, kind="stable"))[:3]
    rest = list(np.argsort(-first.raw, kind="stable"))[3:]
    blend = second.raw[head] + 0.5 * first.raw[head]
    assert got.raw[head] == pytest.approx(blend, abs=1e-5)
    assert list(np.argsort(-got.raw, kind="stable"))[:3] == [head[i] for i in np.argsort(-blend)]
    assert got.probability[head] == pytest.approx(second.probability[head], abs=1e-5)
    assert got.raw[rest].max() < got.raw[head].min()

    # calibrating the cascade fits the blend of every judged pair (all rescored) and stores it
    from reranker.training.calibrate import calibrate

    products = read_catalog(catalog_csv).products
    rows = [
        (q, p.id, 1.0 + 2.0 * ((i * 7) % 5) / 4)
        for q in ("drill", "hose")
        for i, p in enumerate(products[:8])
    ]
    judged = write_judged(tmp_path / "held.parquet", rows)
    result = calibrate(out, judged, catalog_csv, variant="fp32")
    stored = json.loads((out / "reranker.json").read_text())["calibration"]
    assert stored["scale"] == result["scale"] and stored["method"] == "platt"
    again = open_model(out, variant="fp32").score("cordless drill", texts)
    expected = 1 / (1 + np.exp(-(stored["scale"] * again.raw[head] + stored["bias"])))
    assert again.probability[head] == pytest.approx(expected, abs=1e-5)
    assert again.probability[rest] == pytest.approx(first.probability[rest], abs=1e-6)


def test_a_call_can_rescore_fewer_and_zero_leaves_the_first_order(cascade_dir, texts):
    cascade = open_model(cascade_dir, variant="fp32")
    first = cascade.first.score("cordless drill", texts)
    second = cascade.second.score("cordless drill", texts)
    by_first = list(np.argsort(-first.raw, kind="stable"))
    one = cascade.score("cordless drill", texts, second_k=1)
    assert cascade.rescored(len(texts), 1) == 1 and cascade.rescored(2) == 2
    assert one.raw[by_first[0]] == pytest.approx(second.raw[by_first[0]], abs=1e-5)
    assert list(np.argsort(-one.raw, kind="stable")) == by_first  # the rest keep the first order
    none = cascade.score("cordless drill", texts, second_k=0)
    assert none.raw == pytest.approx(first.raw) and cascade.rescored(len(texts), 0) == 0
    more = cascade.score("cordless drill", texts, second_k=50)  # never above the config's 3
    assert more.raw == pytest.approx(cascade.score("cordless drill", texts).raw)
    assert cascade.rescored(len(texts), 50) == 3


def test_a_deployment_sets_its_own_second_k(
    cascade_dir,
    texts,
    late_student,  # noqa: F811
    catalog_csv,
    tmp_path,
):
    """`open_model(..., second_k=N)` / `--second-k N`: the second stage rescores N (more or fewer
    than the config's 3) every time, ranked by the config's blend; a plain model refuses it."""
    five = open_model(cascade_dir, variant="fp32", second_k=5)
    assert five.second_k == 5 and five.rescored(len(texts)) == 5
    same = open_model(cascade_dir, variant="fp32").score("cordless drill", texts, second_k=3)
    fewer = open_model(cascade_dir, variant="fp32", second_k=3).score("cordless drill", texts)
    assert fewer.raw == pytest.approx(same.raw)
    assert five.latency.predict_ms(len(texts)) > 0  # the cost model counts 5 in the second stage
    with pytest.raises(ModelError, match="not a cascade"):
        open_model(late_student[1], second_k=3)
    with pytest.raises(ModelError, match="positive integer"):
        open_model(cascade_dir, second_k=0)

    idx = tmp_path / "idx"
    index_catalog(catalog_csv, idx, model=open_model(cascade_dir))
    env = dict(os.environ, RERANKER_MODEL=str(cascade_dir))
    result = CliRunner().invoke(
        main, ["search", "cordless drill", "--index-dir", str(idx), "--second-k", "5"], env=env
    )
    assert result.exit_code == 0 and "its best 5 rescored" in result.output, result.output
    app = create_app(open_model(cascade_dir, second_k=5), BM25Index.load(idx), ServiceSettings())
    with TestClient(app) as c:  # what `reranker serve --second-k 5` serves
        body = c.post("/search", json={"query": "cordless drill", "n": 20}).json()
        assert body["rescored_k"] == 5 and body["reranked_k"] > 5, body
    result = CliRunner().invoke(
        main,
        [
            "search",
            "drill",
            "--index-dir",
            str(idx),
            "--model",
            str(late_student[1]),
            "--second-k",
            "2",
        ],
        env=env,
    )
    assert result.exit_code == 1 and "is not a cascade" in result.output, result.output


def test_all_rescores_every_candidate_and_a_budget_still_cuts_it(
    late_student,  # noqa: F811
    cross_brand,
    texts,
    tmp_path,
):
    """`--second-k all` (``"second_k": null``, the shipped `accurate` profile's form): the blend
    of the two students over every candidate, however many; a budget can still rescore fewer."""
    out = tmp_path / "all"
    r = _cascade_cli(late_student[1], cross_brand, out, "--second-k", "all", "--first-weight", ".5")
    assert r.exit_code == 0 and "on every candidate" in r.output.split(",")[-1], r.output
    assert json.loads((out / "reranker.json").read_text())["second_k"] is None
    cascade = open_model(out, variant="fp32")
    first = cascade.first.score("cordless drill", texts)
    second = cascade.second.score("cordless drill", texts)
    got = cascade.score("cordless drill", texts)
    assert got.raw == pytest.approx(second.raw + 0.5 * first.raw, abs=1e-5)
    assert cascade.rescored(len(texts)) == len(texts) and cascade.rescored(1000) == 1000
    assert cascade.rescored(len(texts), 2) == 2
    _freeze_costs(cascade)
    assert cascade.latency.predict_ms(9) == pytest.approx(100 + 90 + 100 + 9 * 200)
    assert cascade.latency.split(100 + 90 + 100 + 2 * 200, 9) == (9, 2)
    for bad in ("0", "-3", "most"):
        r = _cascade_cli(late_student[1], cross_brand, tmp_path / "bad", "--second-k", bad)
        assert r.exit_code == 2 and "neither a positive integer nor 'all'" in r.output, r.output


def _freeze_costs(cascade) -> None:
    """Frozen cost lines: the first stage 100 ms + 10 ms a pair, the second 100 + 200 a pair."""
    for stage, (fixed, per) in ((cascade.first, (100.0, 10.0)), (cascade.second, (100.0, 200.0))):
        stage.latency.fixed_ms, stage.latency.per_pair_ms, stage.latency.alpha = fixed, per, 0.0


def test_a_budget_shrinks_the_second_stage_before_the_candidates(
    cascade_dir, catalog_csv, tmp_path
):
    import types

    import reranker.pipeline as pipeline_module

    cascade = open_model(cascade_dir, variant="fp32")
    latency = cascade.calibrate_latency()
    _freeze_costs(cascade)
    assert latency.split(1e9, 20) == (20, 3)
    assert latency.split(300 + 400, 20) == (20, 1)  # 300 ms for all 20, 400 left: one rescored
    assert latency.split(300, 20) == (20, 0)  # only the first stage fits
    assert latency.split(150, 20) == (5, 0)  # not even that: its top 5
    assert latency.k_for(700, 20) == 20

    index_catalog(catalog_csv, tmp_path / "idx", model=cascade)
    index = BM25Index.load(tmp_path / "idx")
    pipeline = SearchPipeline(index, cascade, k=20, n=20)
    full = pipeline.search("cordless drill")
    n = full.candidates
    assert n > 3 and full.reranked_k == n and full.rescored_k == 3
    budget = 100 + 10 * n + 400  # the first stage on all n, 400 ms left: one rescored
    real = pipeline_module.time
    pipeline_module.time = types.SimpleNamespace(perf_counter=lambda: 0.0)  # retrieval: 0 ms
    try:
        cut = pipeline.search("cordless drill", budget_ms=budget)
    finally:
        pipeline_module.time = real
    assert cut.reranked_k == n and cut.rescored_k == 1 and cut.to_dict()["rescored_k"] == 1
    cands = index.retrieve("cordless drill", 20)
    texts = [c.product.text(("brand",)) for c in cands]
    one = cascade.score("cordless drill", texts, second_k=1).raw
    by_id = {c.product.id: float(s) for c, s in zip(cands, one, strict=True)}
    assert [r.rerank_score for r in cut.results] == pytest.approx(
        [by_id[r.product_id] for r in cut.results], abs=1e-5
    )

    # the service cuts it the same way under a deadline: all scored, one rescored
    app = create_app(cascade, index, ServiceSettings(k=20, n=20))
    with TestClient(app) as c:
        _freeze_costs(cascade)  # the service calibrated the costs again at start
        # 80% of what is left of the deadline is the budget: one rescored unless the request
        # spent 125 ms before the model
        body = c.post(
            "/search", json={"query": "cordless drill", "deadline_ms": budget / 0.8}
        ).json()
    assert body["reranked"] and body["reranked_k"] == n and body["rescored_k"] == 1
    assert [r["rerank_score"] for r in body["results"]] == pytest.approx(
        [by_id[r["product_id"]] for r in body["results"]], abs=1e-5
    )
