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
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
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


def _run(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]


def _weights(path):
    return list(integer_weights(path).values())


@pytest.mark.parametrize("per_channel", [True, False])
def test_seven_bit_weights_keep_the_graph_and_fit_the_avx2_sums(tmp_path, per_channel):
    fp32, int8 = _int8_graph(tmp_path, per_channel)
    assert max(np.abs(w.astype(int)).max() for w in _weights(int8)) == 127
    out = tmp_path / "int7.onnx"
    assert requantize(int8, out) == {"weights": 2, "already": 0}
    assert all(np.abs(w.astype(int)).max() <= SEVEN_BIT for w in _weights(out))
    x = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    exact = _run(fp32, x)
    err7 = np.abs(_run(out, x) - exact).max()
    assert err7 < 0.05 * np.abs(exact).max()  # a 7-bit step, not a broken scale
    # already in range: nothing to do, the same graph
    again = tmp_path / "again.onnx"
    assert requantize(out, again) == {"weights": 0, "already": 2}
    np.testing.assert_array_equal(_run(again, x), _run(out, x))


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
