import numpy as np
import pytest

from reranker.errors import RerankerError
from reranker.training.requantize import SEVEN_BIT, integer_weights, main, requantize


def _int8_graph(tmp_path, per_channel=True):
    """A two-layer fp32 MatMul graph, dynamically quantised as `reranker export` does."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(16, 32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(32, 8)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="enc/first"),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="head/second"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [w1, w2],
    )
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), fp32)
    int8 = tmp_path / "int8.onnx"
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=per_channel)
    return fp32, int8


def _run(path, x, fold_weights=False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if fold_weights:  # as the late student's sessions load a graph with int8-stored weights
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _weights(path):
    return list(integer_weights(path).values())


@pytest.mark.parametrize("per_channel", [True, False])
def test_seven_bit_weights_keep_the_graph_and_fit_the_avx2_sums(tmp_path, per_channel):
    fp32, int8 = _int8_graph(tmp_path, per_channel)
    assert max(np.abs(w.astype(int)).max() for w in _weights(int8)) == 127
    out = tmp_path / "int7.onnx"
    assert requantize(int8, out) == {"weights": 2, "already": 0, "float": 0, "per_token": 0}
    assert all(np.abs(w.astype(int)).max() <= SEVEN_BIT for w in _weights(out))
    x = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    exact = _run(fp32, x)
    err7 = np.abs(_run(out, x) - exact).max()
    assert err7 < 0.05 * np.abs(exact).max()  # a 7-bit step, not a broken scale
    # already in range: nothing to do, the same graph
    again = tmp_path / "again.onnx"
    assert requantize(out, again) == {"weights": 0, "already": 2, "float": 0, "per_token": 0}
    np.testing.assert_array_equal(_run(again, x), _run(out, x))


def test_float_prefix_computes_those_nodes_in_float_on_their_8bit_weights(tmp_path):
    import onnx
    from onnx import numpy_helper

    fp32, int8 = _int8_graph(tmp_path)
    out = tmp_path / "mixed.onnx"
    counts = requantize(int8, out, float_prefix="enc/")
    assert counts == {"weights": 1, "already": 0, "float": 1, "per_token": 0}
    graph = onnx.load(str(out)).graph
    assert [n.op_type for n in graph.node if n.op_type in ("MatMulInteger", "MatMul")] == [
        "MatMul",
        "MatMulInteger",
    ]
    assert not any(n.op_type == "DynamicQuantizeLinear" and "x" in n.input for n in graph.node)
    # the float node reads the same 8-bit weight, dequantised: exact against that weight
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    assert any(v.dtype == np.int8 and np.abs(v.astype(int)).max() == 127 for v in inits.values())
    x = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    exact = _run(fp32, x)
    for fold in (False, True):
        got = _run(out, x, fold_weights=fold)
        assert np.abs(got - exact).max() < 0.05 * np.abs(exact).max()
    np.testing.assert_allclose(_run(out, x, fold_weights=True), _run(out, x), rtol=1e-5, atol=1e-5)
    # a prefix that names nothing changes nothing but the 7 bits
    same = tmp_path / "same.onnx"
    assert requantize(int8, same, float_prefix="none/")["float"] == 0
    # several prefixes: a node named by any of them
    several = tmp_path / "several.onnx"
    assert requantize(int8, several, float_prefix=["none/", "enc/"])["float"] == 1
    np.testing.assert_array_equal(_run(several, x), _run(out, x))


def test_per_token_scores_each_row_as_it_would_alone(tmp_path):
    """One scale per call lets one large row coarsen every other row's rounding; one per token
    makes a row's result independent of the rows sent with it, and nearer the fp32 graph."""
    import onnx
    import onnxruntime as ort

    fp32, int8 = _int8_graph(tmp_path)
    out = tmp_path / "per_token.onnx"
    counts = requantize(int8, out, per_token=True)
    assert counts == {"weights": 2, "already": 0, "float": 0, "per_token": 2}
    assert not any(n.op_type == "DynamicQuantizeLinear" for n in onnx.load(str(out)).graph.node)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 16)).astype(np.float32)
    batch = np.concatenate([x, 40 * rng.normal(size=(1, 16)).astype(np.float32)])
    exact = _run(fp32, x)
    alone = np.concatenate([_run(out, row[None]) for row in x])
    # ONNX Runtime's fused kernels (all optimisations, as the runtime loads graphs) and the
    # unfused graph agree: the per-row scale is applied to rows, not read as a per-column one
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(plain.run(None, {"x": x})[0], _run(out, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_run(out, batch)[:5], alone, rtol=1e-5, atol=1e-5)
    per_call = _run(_seven_bit(int8, tmp_path), batch)[:5]
    assert np.abs(per_call - exact).max() > 2 * np.abs(alone - exact).max()
    assert np.abs(alone - exact).max() < 0.05 * np.abs(exact).max()
    # with the float arithmetic of some nodes: the others still per token
    mixed = tmp_path / "mixed.onnx"
    assert requantize(int8, mixed, float_prefix="enc/", per_token=True)["per_token"] == 1
    assert np.abs(_run(mixed, x) - exact).max() < 0.05 * np.abs(exact).max()
    # a graph whose nodes are unnamed: each input still gets its own operations
    unnamed = onnx.load(str(int8))
    for node in unnamed.graph.node:
        node.name = ""
    onnx.save(unnamed, tmp_path / "unnamed.onnx")
    requantize(tmp_path / "unnamed.onnx", tmp_path / "unnamed_pt.onnx", per_token=True)
    np.testing.assert_allclose(_run(tmp_path / "unnamed_pt.onnx", x), _run(out, x), atol=1e-5)
    # nothing left to rewrite: a graph already per token is left as it is
    again = tmp_path / "again.onnx"
    assert requantize(out, again, per_token=True)["per_token"] == 0
    np.testing.assert_array_equal(_run(again, batch), _run(out, batch))


def _seven_bit(int8, tmp_path):
    out = tmp_path / "seven.onnx"
    requantize(int8, out)
    return out


def test_per_token_refuses_a_quantised_input_read_otherwise(tmp_path):
    """A graph that reads an activation's scale elsewhere too (here as an output) would see it
    change; the rewrite refuses it and writes nothing."""
    import onnx
    from onnx import TensorProto, helper

    _, int8 = _int8_graph(tmp_path)
    m = onnx.load(str(int8))
    quant = next(n for n in m.graph.node if n.op_type == "DynamicQuantizeLinear")
    m.graph.node.append(helper.make_node("Identity", [quant.output[1]], ["peek"]))
    m.graph.output.append(helper.make_tensor_value_info("peek", TensorProto.FLOAT, None))
    bad = tmp_path / "peek.onnx"
    onnx.save(m, bad)
    with pytest.raises(RerankerError, match="not read as dynamic int8 reads it"):
        requantize(bad, tmp_path / "out.onnx", per_token=True)
    assert not (tmp_path / "out.onnx").exists()


def test_float_prefix_refuses_an_integer_product_of_another_pattern(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w_quantized"], ["y"], name="enc/raw")],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, 2])],
        [
            numpy_helper.from_array(np.ones((4, 2), np.int8), "w_quantized"),
            numpy_helper.from_array(np.ones(2, np.float32), "w_scale"),
        ],
    )
    path = tmp_path / "raw.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(RerankerError, match="enc/raw is not a dynamically quantised MatMul"):
        requantize(path, tmp_path / "out.onnx", float_prefix="enc/")


def test_requantize_cli_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing.onnx"), str(tmp_path / "out.onnx")]) == 1
    assert "is not a file" in capsys.readouterr().err
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a graph")
    assert main([str(garbage), str(tmp_path / "out.onnx")]) == 1
    assert "is not an ONNX model" in capsys.readouterr().err
    _, int8 = _int8_graph(tmp_path)
    assert main([str(int8), str(tmp_path / "out.onnx")]) == 0
    assert "2 weights requantised to 7 bits" in capsys.readouterr().out
    assert main([str(int8), str(tmp_path / "f.onnx"), "--float-prefix", "enc/"]) == 0
    assert "1 weights requantised to 7 bits, 0 already within ±64, 1 computed in float32" in (
        capsys.readouterr().out
    )
    several = ["--float-prefix", "x/", "--float-prefix", "enc/"]
    assert main([str(int8), str(tmp_path / "g.onnx"), *several]) == 0
    assert "1 computed in float32" in capsys.readouterr().out
    assert main([str(int8), str(tmp_path / "p.onnx"), "--per-token"]) == 0
    assert "2 inputs quantised per token" in capsys.readouterr().out
    assert main([str(int8), str(tmp_path / "no" / "such" / "dir.onnx")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_an_asymmetric_weight_is_refused(tmp_path):
    import onnx
    from onnx import numpy_helper

    _, int8 = _int8_graph(tmp_path)
    m = onnx.load(str(int8))
    for init in m.graph.initializer:
        if init.name.endswith("_zero_point") and init.data_type == onnx.TensorProto.INT8:
            z = numpy_helper.to_array(init).copy()
            z[...] = 3
            init.CopyFrom(numpy_helper.from_array(z, init.name))
    bad = tmp_path / "asym.onnx"
    onnx.save(m, bad)
    with pytest.raises(RerankerError, match="not symmetric"):
        requantize(bad, tmp_path / "out.onnx")


def test_seven_bit_integer_products_are_exact_at_the_extremes():
    """uint8 255 x int8 64 in every position: no pair sum reaches the 16 bits an AVX2 kernel
    keeps (with 127 it would: 2 x 255 x 127 > 32767), so every CPU gives the exact integers."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 64
    w = np.full((k, 4), SEVEN_BIT, np.int8)
    w[:, 1] = -SEVEN_BIT
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.full((3, k), 255, np.uint8)
    np.testing.assert_array_equal(sess.run(None, {"a": a})[0], a.astype(np.int64) @ w)


def test_the_shipped_graphs_have_seven_bit_weights():
    from reranker import models

    root = next(iter(models.__path__))
    for graph in ("cross/model.int8.onnx", "late/joint.int8.onnx", "retriever/model.int8.onnx"):
        weights = _weights(f"{root}/{graph}")
        assert weights and all(np.abs(w.astype(int)).max() <= SEVEN_BIT for w in weights), graph
