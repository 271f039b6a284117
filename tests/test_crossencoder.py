import json

import numpy as np
import pytest

from reranker.catalog import Product
from reranker.crossencoder import CONFIG_FILE, CrossEncoder
from reranker.errors import ModelError

TEXTS = [
    "DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit | brand: DEWALT",
    "Garden Hose",
    "Round Front Toilet Seat | brand: Bemis | color: White",
    "Drill Bit Set Titanium (21-Piece) | brand: DEWALT",
    "Hose",
]


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_scores_in_input_order_whatever_the_batching(tiny_model, variant):
    model = CrossEncoder(tiny_model, variant=variant, batch_size=2)
    batched = model.score("cordless drill", TEXTS)
    one_by_one = np.array([model.score("cordless drill", [t]).raw[0] for t in TEXTS])
    # Dynamic int8 quantizes activations with a range taken over the whole batch, so int8 scores
    # move slightly with batch composition; fp32 scores must not.
    np.testing.assert_allclose(batched.raw, one_by_one, atol=1e-5 if variant == "fp32" else 0.05)
    np.testing.assert_allclose(batched.probability, 1 / (1 + np.exp(-batched.raw)), rtol=1e-6)
    assert batched.raw.shape == (5,) and np.all(
        (0 <= batched.probability) & (batched.probability <= 1)
    )


def test_config_carries_inference_settings_and_parity(tiny_model):
    model = CrossEncoder(tiny_model)
    cfg = model.config
    assert (cfg.max_length, cfg.fields, cfg.activation, cfg.default_variant) == (
        32,
        ("brand", "color"),
        "sigmoid",
        "int8",
    )
    assert set(cfg.files) == {"fp32", "int8"}
    assert cfg.metadata["parity"]["fp32_vs_torch_max_abs_diff"] < 1e-4
    assert model.name == "tiny-test-model"


def test_products_are_scored_with_the_models_fields(tiny_model):
    model = CrossEncoder(tiny_model, variant="fp32")
    p = Product("x", "Drill", {"brand": "Acme", "material": "Steel"})
    assert model.score_products("drill", [p]).raw[0] == pytest.approx(
        model.score("drill", ["Drill | brand: Acme"]).raw[0], abs=1e-6
    )


def test_empty_list_and_very_long_query(tiny_model):
    model = CrossEncoder(tiny_model)
    assert model.score("drill", []).raw.shape == (0,)
    long = "cordless drill " * 50_000
    scores = model.score(long, TEXTS)
    assert np.all(np.isfinite(scores.raw))
    # the product keeps at least half of the budget: the query is cut to max_length // 2 tokens
    assert len(model.query_ids(long)) == model.max_query_tokens


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError, match="model directory not found"):
        CrossEncoder(tmp_path / "nope")


def test_directory_without_config(tmp_path):
    with pytest.raises(
        ModelError, match=r"not a kd-reranker model directory: reranker.json is missing"
    ):
        CrossEncoder(tmp_path)


def test_corrupt_config(model_copy):
    (model_copy / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelError, match=r"cannot read .*reranker.json"):
        CrossEncoder(model_copy)


def test_newer_format_version(model_copy):
    cfg = json.loads((model_copy / CONFIG_FILE).read_text())
    cfg["format_version"] = 7
    (model_copy / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="format version 7"):
        CrossEncoder(model_copy)


def test_missing_onnx_file(model_copy):
    (model_copy / "model.int8.onnx").unlink()
    with pytest.raises(ModelError, match=r"model file missing: .*model.int8.onnx"):
        CrossEncoder(model_copy)


def test_corrupt_onnx_file(model_copy):
    (model_copy / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelError, match=r"cannot load .*model.onnx"):
        CrossEncoder(model_copy, variant="fp32")


def test_missing_tokenizer(model_copy):
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"cannot load tokenizer .*tokenizer.json"):
        CrossEncoder(model_copy)


def test_unknown_variant(tiny_model):
    with pytest.raises(ModelError, match=r"no 'bf16' variant; it has: fp32, int8"):
        CrossEncoder(tiny_model, variant="bf16")
