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
from reranker.crossencoder import CrossEncoder
from reranker.errors import ModelError
from reranker.index import BM25Index
from reranker.index.build import index_catalog
from reranker.late import (
    FLOAT_QUERY,
    FLOAT_QUERY_FILE,
    LateCrossEncoder,
    ProductStates,
    TextEncoder,
)
from reranker.models import open_model
from reranker.pipeline import SearchPipeline
from reranker.serve import ServiceSettings, create_app
from reranker.training.requantize import SEVEN_BIT, integer_weights

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
    assert cfg["files"] == {
        "fp32": "joint.onnx",
        "int8": "joint.int8.onnx",
        FLOAT_QUERY: FLOAT_QUERY_FILE,
    }
    assert cfg["encoder_files"] == {
        "fp32": "encoder.onnx",
        "int8": "encoder.w8.onnx",
        FLOAT_QUERY: "encoder.w8.onnx",
    }
    assert cfg["fields"] == ["brand"] and cfg["max_length"] == 24 and cfg["max_query_tokens"] == 8
    assert cfg["metadata"]["parity"]["fp32_vs_torch_max_abs_diff"] < 1e-4
    model = open_model(onnx_dir)
    assert isinstance(model, LateCrossEncoder) and model.variant == "int8"
    fp32 = open_model(onnx_dir, variant="fp32")
    assert isinstance(fp32, LateCrossEncoder)
    assert fp32.token_key["encoder_sha256"] != model.token_key["encoder_sha256"]
    # the joint graph's dynamic int8 (query encoder, [CLS] layer): 7-bit weights, exact on
    # CPUs without VNNI too
    weights = integer_weights(onnx_dir / "joint.int8.onnx").values()
    assert weights and max(np.abs(w.astype(int)).max() for w in weights) <= SEVEN_BIT


def test_ship_installs_both_graphs_of_a_late_model(late_student, tmp_path):
    from reranker.training.ship import ship

    out = ship(late_student[1], tmp_path / "shipped", "# card\n")
    assert sorted(p.name for p in out.iterdir()) == [
        "MODEL_CARD.md",
        "encoder.w8.onnx",
        FLOAT_QUERY_FILE,
        "joint.int8.onnx",
        "reranker.json",
        "tokenizer.json",
    ]
    # the profile computes its query in float32; the dynamic-int8 graph stays for cascades
    model = open_model(out)
    assert model.variant == FLOAT_QUERY
    assert model.score("drill", ["cordless drill"]).raw.shape == (1,)
    assert open_model(out, variant="int8").variant == "int8"


def test_float_query_variant_computes_the_query_as_the_products_on_the_same_weights(late_student):
    """int8-float-query: the joint graph with its query encoder's MatMuls in float32 arithmetic
    on the same int8 weights (nothing else changed), the same stored product states (one index
    serves both variants), and its scores close to fp32's."""
    import onnx

    onnx_dir = late_student[1]
    graph = onnx.load(str(onnx_dir / FLOAT_QUERY_FILE)).graph
    query_ops = {n.op_type for n in graph.node if n.name.startswith("query_encoder/")}
    assert "MatMulInteger" not in query_ops and "DequantizeLinear" in query_ops
    # the [CLS] layer keeps its dynamic int8 and its very weights
    int8_weights = integer_weights(onnx_dir / "joint.int8.onnx")
    kept = integer_weights(onnx_dir / FLOAT_QUERY_FILE)
    assert kept and set(kept) < set(int8_weights)
    for name, w in kept.items():
        assert np.array_equal(w, int8_weights[name])
    fq = open_model(onnx_dir, variant=FLOAT_QUERY)
    int8 = open_model(onnx_dir, variant="int8")
    assert fq.token_key == int8.token_key
    states = int8.product_inputs(["cordless drill kit", "garden hose 50 ft"])
    assert np.isfinite(fq.score_ids(fq.query_ids("cordless drill"), states).raw).all()
    # the query's states: within the 7-bit weights' rounding of fp32's (on the shipped student
    # the float query is the closer to fp32 in ranking: training/REPORT.md, twentieth session;
    # on this tiny random one the weights' rounding dominates both graphs' error)
    ids = np.asarray([fq.query_ids("cordless drill 20 volt")], dtype=np.int64)
    got = {
        name: _query_states(onnx_dir / name, ids)
        for name in ("joint.onnx", "joint.int8.onnx", FLOAT_QUERY_FILE)
    }
    ref = got["joint.onnx"]
    assert not np.array_equal(got[FLOAT_QUERY_FILE], got["joint.int8.onnx"])
    assert np.abs(got[FLOAT_QUERY_FILE] - ref).mean() < 0.1 * np.abs(ref).mean()


def _query_states(path, ids: np.ndarray) -> np.ndarray:
    """A joint graph's query encoder output (``query_encoder/states``) for ``ids``."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    model.graph.output.append(
        helper.make_tensor_value_info("query_encoder/states", TensorProto.FLOAT, None)
    )
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(model.SerializeToString(), options)
    hidden = next(i.shape[1] for i in session.get_inputs() if i.name == "product_states")
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "product_states": np.full((1, hidden), 128, dtype=np.uint8),
        "product_scales": np.ones((1, 1), dtype=np.float32),
        "token_pair": np.zeros(1, dtype=np.int64),
        "pair_query": np.zeros(1, dtype=np.int64),
    }
    return session.run(["query_encoder/states"], feeds)[0]


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


def _packed_feeds(q_states, q_mask, stored, pair_query):
    from reranker.late import split_states

    states, scales = split_states(np.concatenate(stored))
    return {
        "query_states": q_states,
        "query_mask": q_mask,
        "product_states": states,
        "product_scales": scales,
        "token_pair": np.repeat(np.arange(len(stored)), [len(r) for r in stored]),
        "pair_query": np.asarray(pair_query, dtype=np.int64),
    }


def test_packed_joint_graph_equals_torch_on_the_stored_states(late_student):
    """The hand-built graph (packed tokens read into a padded batch, the [CLS] query folded into
    the key weights, states summed with their attention weights before the value projection)
    gives LateBert.joint's numbers for queries of different lengths (padded query rows) and
    products of different lengths, pair by pair; the integer variant within int8 tolerance."""
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification

    from reranker.late import dequantize_states, quantize_states
    from reranker.training.latebert import LateBert
    from reranker.training.latejoint import build_joint

    model = AutoModelForSequenceClassification.from_pretrained(str(late_student[0])).eval()
    late = LateBert(model).eval()
    hidden = model.config.hidden_size
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 6, hidden, generator=g)
    qm = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    stored = [quantize_states(torch.randn(n, hidden, generator=g).numpy()) for n in (3, 9, 1, 5)]
    pair_query = [1, 0, 0, 1]
    want = []
    with torch.no_grad():
        for rows, j in zip(stored, pair_query, strict=True):
            p = torch.from_numpy(dequantize_states(rows))[None]
            want.append(late.joint(q[j : j + 1], qm[j : j + 1], p, torch.ones(p.shape[:2]))[0, 0])
    feeds = _packed_feeds(q.numpy(), qm.numpy(), stored, pair_query)
    for int8, tol in ((False, 1e-5), (True, 5e-2)):
        graph = build_joint(late, int8=int8).SerializeToString()
        got = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        np.testing.assert_allclose(got[:, 0], np.array(want), atol=tol)


def test_stored_states_round_trip_within_half_a_step():
    from reranker.late import dequantize_states, quantize_states, split_states

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(7, 16)) * [[1], [10], [0.1], [1], [3], [1], [100]]).astype(np.float32)
    x[3] = 0.0  # an all-zero token keeps a usable scale
    stored = quantize_states(x)
    assert stored.dtype == np.uint8 and stored.shape == (7, 16 + 4)
    states, scales = split_states(stored)
    assert states.flags.c_contiguous and scales.shape == (7, 1) and scales.dtype == np.float32
    assert np.all(np.abs(dequantize_states(stored) - x) <= scales / 2 + 1e-7)


def _one_node_session(node, inputs, output, inits=()):
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph([node], "g", inputs, [output], list(inits))
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx_model.ir_version = 8
    return ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_integer_scores_do_not_saturate():
    """The AVX2 u8 x s8 kernel adds pairs of byte products in 16 bits: with 8-bit integers and
    extreme states (255, 255) it overflows. The joint graph's query-folded key matrix (an input
    of the product, not a stored weight) is cut to 7 bits, which keeps it exact."""
    from onnx import TensorProto, helper, numpy_helper

    from reranker.late import ZERO_POINT
    from reranker.training.latejoint import WEIGHT_MAX, quantize_weight

    rng = np.random.default_rng(0)
    w, col = quantize_weight(rng.normal(size=(64, 32)).astype(np.float32))
    assert np.abs(w).max() == WEIGHT_MAX
    w[:, 0] = WEIGHT_MAX  # the worst column
    sess = _one_node_session(
        helper.make_node(
            "MatMulIntegerToFloat", ["a", "w", "s", "ws", "zp"], ["y"], domain="com.microsoft"
        ),
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [None, 64]),
            helper.make_tensor_value_info("w", TensorProto.INT8, [64, 32]),
        ],
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32]),
        [
            numpy_helper.from_array(np.array(1.0, np.float32), "s"),
            numpy_helper.from_array(col, "ws"),
            numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "zp"),
        ],
    )
    a = np.vstack([np.full((1, 64), 255), np.full((1, 64), 1), rng.integers(1, 256, (30, 64))])
    a = a.astype(np.uint8)
    got = sess.run(None, {"a": a, "w": w})[0]
    exact = ((a.astype(np.int64) - ZERO_POINT) @ w.astype(np.int64)) * col
    np.testing.assert_allclose(got, exact, rtol=1e-5)


def test_integer_weighted_sums_are_exact():
    """The weighted sums over a pair's tokens: 8-bit weights x uint8 states (zero point 128), one
    product per pair, exact in integers even at the extremes."""
    from onnx import TensorProto, helper, numpy_helper

    from reranker.late import ZERO_POINT

    rng = np.random.default_rng(0)
    w = rng.integers(0, 256, (3, 12, 32)).astype(np.uint8)
    w[0] = 255
    x = rng.integers(1, 256, (3, 32, 64)).astype(np.uint8)
    x[0], x[1, :, :7] = 255, 1
    sess = _one_node_session(
        helper.make_node("MatMulInteger", ["w", "x", "wz", "xz"], ["y"]),
        [
            helper.make_tensor_value_info("w", TensorProto.UINT8, [None, 12, None]),
            helper.make_tensor_value_info("x", TensorProto.UINT8, [None, None, 64]),
        ],
        helper.make_tensor_value_info("y", TensorProto.INT32, [None, 12, 64]),
        [
            numpy_helper.from_array(np.array(0, np.uint8), "wz"),
            numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "xz"),
        ],
    )
    got = sess.run(None, {"w": w, "x": x})[0]
    np.testing.assert_array_equal(got, w.astype(np.int64) @ (x.astype(np.int64) - ZERO_POINT))


def test_runtime_scores_the_same_in_any_number_of_calls(late_student):
    # fp32: exactly; the int8 variant quantises the per-pair layer's activations per call (one
    # scale for the call), so there a score moves slightly with the other pairs of its call
    model = open_model(late_student[1], variant="fp32")
    texts = ["cordless drill kit", "garden hose 50 ft", "white toilet seat", "led bulb"] * 4
    stored = model.product_inputs(texts)
    q = model.query_ids("drill")
    one = model.score_ids(q, stored).raw
    np.testing.assert_allclose(model.score_ids(q, stored, batch_size=3).raw, one, atol=1e-6)


def test_index_with_states_of_the_older_format_warns_and_still_searches(
    late_student, catalog_csv, tmp_path
):
    model = open_model(late_student[1], variant="fp32")
    index_catalog(catalog_csv, tmp_path / "idx", model=model)
    manifests = list((tmp_path / "idx").glob("gen-*/manifest.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    manifest["product_tokens"]["kind"] = "late-states"  # what the float16 format was called
    manifests[0].write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="older format"):
        index = BM25Index.load(tmp_path / "idx")
    assert index.product_tokens is None and index.retrieve("cordless drill", 3)


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
        assert a.dtype == np.uint8 and np.array_equal(a, b)
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


def test_latency_calibration_does_not_load_the_product_encoder(late_student):
    model = open_model(late_student[1])
    model.calibrate_latency()
    assert model.latency.calibrated and model._encoder is None
    model.score("drill", ["cordless drill"])  # texts need it
    assert model._encoder is not None


def test_int8_product_encoder_keeps_float_arithmetic_close_to_fp32(late_student):
    """encoder.w8.onnx: int8-stored weights, float32 arithmetic; its states stay within the
    weights' rounding of the fp32 encoder's (dynamic int8 activations strayed further)."""
    import onnx

    onnx_dir = late_student[1]
    ops = {n.op_type for n in onnx.load(str(onnx_dir / "encoder.w8.onnx")).graph.node}
    assert "DequantizeLinear" in ops and "MatMulInteger" not in ops
    assert (onnx_dir / "encoder.w8.onnx").stat().st_size < 0.6 * (
        onnx_dir / "encoder.onnx"
    ).stat().st_size
    rows = open_model(onnx_dir).products_enc.encode(["cordless drill kit", "garden hose 50 ft"])
    a = open_model(onnx_dir, variant="fp32").encode_ids(rows)
    b = open_model(onnx_dir, variant="int8").encode_ids(rows)
    for x, y in zip(a, b, strict=True):
        assert np.abs(x - y).max() < 0.05 * np.abs(x).max()


def test_products_sent_as_text_are_read_from_attached_states(late_student, catalog_csv, tmp_path):
    """What `reranker serve --product-states DIR` does for products OpenSearch (or any client)
    sends as text: read their stored states instead of encoding them; same scores."""
    from reranker.pipeline import attach_product_states

    model = open_model(late_student[1], variant="fp32", cache_size=0)
    index_catalog(catalog_csv, tmp_path / "idx", model=model)
    index = BM25Index.load(tmp_path / "idx")
    texts = [p.text(model.config.fields) for p in index.products_at(range(5))]
    encoded = open_model(late_student[1], variant="fp32", cache_size=0).score("drill", texts).raw

    all_texts = {p.text(model.config.fields) for p in index.products_at(range(len(index)))}
    assert attach_product_states(model, tmp_path / "idx") == len(all_texts)  # distinct texts
    got = model.score("drill", [*texts, "a product no index has"]).raw
    assert model.stored_hits == 5 and model.encoded_texts == 1  # only the unknown text encoded
    np.testing.assert_allclose(got[:5], encoded, atol=1e-6)

    app = create_app(model, None, ServiceSettings())
    with TestClient(app) as c:
        r = c.post("/v1/rerank", json={"query": "drill", "documents": texts})
        assert r.status_code == 200 and r.headers["x-reranked"] == "true"
        metrics = c.get("/metrics").text
    assert 'kd_product_texts{source="stored"} 10.0' in metrics
    assert 'kd_product_texts{source="encoded"} 1.0' in metrics

    other = open_model(late_student[1], variant="fp32")
    with pytest.raises(ModelError, match="holds no product states"):
        attach_product_states(other, built_index_without_states(catalog_csv, tmp_path))


def built_index_without_states(catalog_csv, tmp_path):
    index_catalog(catalog_csv, tmp_path / "plain", model=None)
    return tmp_path / "plain"
