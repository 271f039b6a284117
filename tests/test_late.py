"""The late-interaction student: training (distill --arch late), export to two graphs, product
states stored with the index, and the same scores through every path that serves it."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient

from reranker.cli import main
from reranker.crossencoder import CrossEncoder, open_model
from reranker.errors import ModelError
from reranker.index import BM25Index
from reranker.index.build import index_catalog
from reranker.late import LateCrossEncoder, ProductStates, TextEncoder
from reranker.pipeline import SearchPipeline
from reranker.service import ServiceSettings, create_app

SCORED = [
    ("cordless drill", "p001", 0.9),
    ("cordless drill", "p029", 0.6),
    ("cordless drill", "p007", 0.1),
    ("cordless drill", "p006", 0.4),
    ("garden hose", "p007", 0.95),
    ("garden hose", "p008", 0.7),
    ("garden hose", "p013", 0.05),
    ("toilet seat", "p013", 0.9),
    ("toilet seat", "p014", 0.8),
    ("toilet seat", "p016", 0.2),
]


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], env={"RERANKER_MODEL": ""})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def late_student(tmp_path_factory, tiny_hf_model, catalog_csv):
    d = tmp_path_factory.mktemp("late")
    scores = d / "scores.parquet"
    cols = ("query", "product_id", "score")
    pq.write_table(pa.table({c: [r[i] for r in SCORED] for i, c in enumerate(cols)}), scores)
    student = d / "student"
    cli(
        "distill",
        "--labelled",
        scores,
        "--catalog",
        catalog_csv,
        "--student",
        tiny_hf_model,
        "--arch",
        "late",
        "--max-length",
        "24",
        "--query-max-length",
        "8",
        "--fields",
        "brand",
        "--batch-pairs",
        "8",
        "--lr",
        "1e-3",
        "--epochs",
        "2",
        "--output",
        student,
    )
    meta = json.loads((student / "distill_args.json").read_text())
    assert meta["arch"] == "late" and meta["pairs"] == len(SCORED)
    out = cli("export", student, "--output", d / "onnx")
    assert "fp32_vs_torch_max_abs_diff" in out
    return student, d / "onnx"


def test_export_writes_encoder_and_joint_graphs_equal_to_torch(late_student):
    _, onnx_dir = late_student
    cfg = json.loads((onnx_dir / "reranker.json").read_text())
    assert cfg["architecture"] == "late"
    assert cfg["files"] == {"fp32": "joint.onnx", "int8": "joint.int8.onnx"}
    assert cfg["encoder_files"] == {"fp32": "encoder.onnx", "int8": "encoder.int8.onnx"}
    assert cfg["fields"] == ["brand"] and cfg["max_length"] == 24 and cfg["max_query_tokens"] == 8
    assert cfg["metadata"]["parity"]["fp32_vs_torch_max_abs_diff"] < 1e-4
    model = open_model(onnx_dir)
    assert isinstance(model, LateCrossEncoder) and model.variant == "int8"
    fp32 = open_model(onnx_dir, variant="fp32")
    assert isinstance(fp32, LateCrossEncoder)
    assert fp32.token_key["encoder_sha256"] != model.token_key["encoder_sha256"]


def test_ship_installs_both_graphs_of_a_late_model(late_student, tmp_path):
    from reranker.training.ship import ship

    out = ship(late_student[1], tmp_path / "shipped", "# card\n")
    assert sorted(p.name for p in out.iterdir()) == [
        "MODEL_CARD.md",
        "encoder.int8.onnx",
        "joint.int8.onnx",
        "reranker.json",
        "tokenizer.json",
    ]
    model = open_model(out)
    assert model.variant == "int8" and model.score("drill", ["cordless drill"]).raw.shape == (1,)


def test_plain_cross_encoder_refuses_a_late_model_directory(late_student):
    with pytest.raises(ModelError, match="late-interaction model: load it with"):
        CrossEncoder(late_student[1])


def test_text_encoder_cuts_like_the_tokenizer(tiny_hf_model):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_hf_model))
    tok = Tokenizer.from_file(str(tiny_hf_model / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    texts = ["cordless drill", "", "garden hose " * 20, "light bulb 60 watt soft white"]
    for max_length in (3, 8, 24):
        enc = TextEncoder(tok, max_length)
        ids = enc.encode(texts)
        want = hf(texts, truncation=True, max_length=max_length)["input_ids"]
        assert [r.tolist() for r in ids] == want


def test_shared_query_row_gives_the_per_pair_scores(late_student):
    from transformers import AutoModelForSequenceClassification

    from reranker.training.latebert import LateBert

    model = AutoModelForSequenceClassification.from_pretrained(str(late_student[0])).eval()
    late = LateBert(model).eval()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 5, model.config.hidden_size, generator=g)
    qm = torch.tensor([[1, 1, 1, 1, 0]])
    p = torch.randn(3, 7, model.config.hidden_size, generator=g)
    pm = torch.ones(3, 7, dtype=torch.long)
    pm[1, 4:] = 0
    with torch.no_grad():
        shared = late.joint(q, qm, p, pm)
        per_row = late.joint(q.expand(3, -1, -1), qm.expand(3, -1), p, pm)
    assert torch.allclose(shared, per_row, atol=1e-6)


def test_index_stores_states_and_search_uses_them(late_student, catalog_csv, tmp_path):
    model = open_model(late_student[1], variant="fp32")
    index_catalog(catalog_csv, tmp_path / "idx", model=model)
    index = BM25Index.load(tmp_path / "idx")
    stored = index.tokens_for(model.token_key)
    assert isinstance(stored, ProductStates) and len(stored) == len(index)
    assert stored.states is None  # read from the file row by row, not held in memory
    built = model.build_store(
        [p.text(model.config.fields) for p in index.products_at(range(len(index)))]
    )
    for a, b in zip(stored.rows(range(len(index))), built.rows(range(len(index))), strict=True):
        assert a.dtype == np.float16 and np.array_equal(a, b)
    assert index.tokens_for({**model.token_key, "encoder_sha256": "other"}) is None

    pipeline = SearchPipeline(index, model, k=20, n=20)
    assert pipeline.product_tokens is stored
    response = pipeline.search("cordless drill")
    assert response.reranked and response.reranked_k == response.candidates
    cands = index.retrieve("cordless drill", 20)
    texts = [c.product.text(model.config.fields) for c in cands]
    fresh = open_model(late_student[1], variant="fp32", cache_size=0)
    raw = fresh.score("cordless drill", texts).raw  # encoded now, rounded like stored states
    by_id = {c.product.id: float(s) for c, s in zip(cands, raw, strict=True)}
    for r in response.results:
        assert r.rerank_score == pytest.approx(by_id[r.product_id], abs=1e-6)

    # the service's /search sends the stored states to its worker; /rerank encodes texts
    app = create_app(model, index, ServiceSettings(k=20, n=20))
    with TestClient(app) as c:
        body = c.post("/search", json={"query": "cordless drill"}).json()
        assert body["reranked"]
        assert [r["product_id"] for r in body["results"]] == [
            r.product_id for r in response.results
        ]
        body = c.post("/rerank", json={"query": "cordless drill", "documents": texts}).json()
        assert body["reranked"]
        got = {r["index"]: r["relevance_score"] for r in body["results"]}
        probs = model.score("cordless drill", texts).probability
        assert all(got[i] == pytest.approx(float(probs[i]), abs=1e-5) for i in got)


def test_cli_index_and_search_with_a_late_model(late_student, catalog_csv, tmp_path):
    env = dict(os.environ, RERANKER_MODEL=str(late_student[1]))
    runner = CliRunner()
    result = runner.invoke(
        main, ["index", str(catalog_csv), "--index-dir", str(tmp_path / "idx"), "-q"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "stored product encoder states" in result.output
    result = runner.invoke(
        main, ["search", "garden hose", "--index-dir", str(tmp_path / "idx")], env=env
    )
    assert result.exit_code == 0 and "reranked by" in result.output


def test_late_student_needs_two_layers(tiny_hf_model):
    from transformers import AutoModelForSequenceClassification

    from reranker.training.latebert import LateBert
    from reranker.training.teacher import keep_layers

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_hf_model))
    keep_layers(model, 1)
    with pytest.raises(ValueError, match="at least 2 layers"):
        LateBert(model)


def test_pairs_of_several_queries_score_as_each_query_alone(late_student):
    model = open_model(late_student[1], variant="fp32")
    texts = ["cordless drill kit", "garden hose 50 ft", "white toilet seat", "led bulb"] * 3
    queries = ["drill", "garden hose", "toilet"]
    qids = [model.query_ids(queries[i % 3]) for i in range(len(texts))]
    states = model.product_inputs(texts)
    merged = model.score_ids(qids, states, batch_size=5).raw
    for j, q in enumerate(queries):
        rows = [i for i in range(len(texts)) if i % 3 == j]
        alone = model.score(q, [texts[i] for i in rows]).raw
        np.testing.assert_allclose(merged[rows], alone, atol=1e-5)


def test_product_states_are_cached_by_text(late_student, monkeypatch):
    model = open_model(late_student[1], variant="fp32", cache_size=3)
    calls = []
    encode = model.encode_texts
    monkeypatch.setattr(model, "encode_texts", lambda t: calls.append(list(t)) or encode(t))
    first = model.score("drill", ["a drill", "a hose", "a drill"]).raw
    assert calls == [["a drill", "a hose"]] and first[0] == first[2]
    again = model.score("drill", ["a hose", "a drill"]).raw
    assert len(calls) == 1 and list(again) == [first[1], first[0]]
    model.score("drill", ["x", "y"])  # evicts the least recently used ("a hose")
    assert list(model._cache) == ["a drill", "x", "y"]
    off = open_model(late_student[1], variant="fp32", cache_size=0)
    off.score("drill", ["a drill"])
    assert not off._cache


def test_search_on_an_index_without_states_says_so(late_student, built_index):
    env = dict(os.environ, RERANKER_MODEL=str(late_student[1]))
    result = CliRunner().invoke(
        main, ["search", "garden hose", "--index-dir", str(built_index)], env=env
    )
    assert result.exit_code == 0 and "reranked by" in result.output
    assert "holds no product states" in result.output
