"""The joint graph of a late-interaction student over *packed* int8 product states.

``reranker index`` stores each product's encoder states as int8 per token (a float32 scale per
token, :func:`reranker.late.quantize_states`). Per query the joint graph gets the states of all
``k`` candidates back to back, ``(tokens, hidden)`` with no padding, and computes:

- the attention step at the query's ``[CLS]`` over the query's tokens and each product's tokens
  without the products' keys and values (:func:`_products`): the ``[CLS]`` query vector is
  folded into the key weights (one hidden × heads matrix per query) that score the stored states
  directly, and each product's states are summed with their attention weights before the value
  projection, once per product and head (about a third of the arithmetic of projecting every
  product token; timings in ``BENCHMARKS.md``); exponentials are taken against the query's own
  maximum score;
- the rest of the last layer, the pooler and the classifier for each product (one row each).

The same numbers as :meth:`reranker.training.latebert.LateBert.joint` on the dequantised states
(tested to float tolerance). Built node by node with ``onnx.helper`` from the trained weights
(the torch exporter cannot express the ragged sums or the integer products).

Inputs: ``query_states`` ``(Q, nq, hidden)`` float32 and ``query_mask`` ``(Q, nq)`` int64 (the
distinct queries, padded), ``product_states`` ``(T, hidden)`` uint8 (zero point 128),
``product_scales`` ``(T, 1)`` float32, ``token_pair`` ``(T,)`` int64 (the pair each token belongs
to, ascending), ``pair_query`` ``(B,)`` int64 (the query row of each pair). Output ``logits``
``(B, 1)``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from reranker.late import PRODUCTS_SCOPE, ZERO_POINT

#: Integers multiplied by the uint8 states use 7 bits: the AVX2 u8 × s8 kernel adds pairs of
#: products in 16 bits, and 2 × 255 × 127 would overflow them (2 × 255 × 63 does not).
WEIGHT_MAX = 63
#: Guard on score − (query's own max score) before ``exp``: float32 overflows past ~88.
EXP_GUARD = 80.0
OPSET = 17
#: The matrix products of the per-pair rest of the last layer and the pooler (one row per pair):
#: the exporter's int8 variant quantises these dynamically.
DYNAMIC_INT8_NODES = ("o.matmul", "i.matmul", "o2.matmul", "pool.matmul")


def quantize_weight(w: np.ndarray, limit: int = WEIGHT_MAX) -> tuple[np.ndarray, np.ndarray]:
    """``(in, out)`` float weight → int8 values in ±``limit`` and a scale per column."""
    scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / limit
    q = np.clip(np.rint(w / scale), -limit, limit).astype(np.int8)
    return q, scale.astype(np.float32)


class _Graph:
    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._n = 0
        self.scope = ""  # prefix of the names of the nodes made now
        self._consts: dict[str, np.ndarray] = {}

    def const(self, name: str, value) -> str:
        """An initializer; a name already defined is reused (with the same value only)."""
        value = np.asarray(value)
        if name in self._consts:
            if not np.array_equal(self._consts[name], value):
                raise ValueError(f"constant {name!r} defined twice with different values")
            return name
        self._consts[name] = value
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def dynamic_int(self, x: str, axis: int, top: int, to: int, signed: bool):
        """``x`` as integers of type ``to`` in ±``top`` (``signed``) or 0..``top`` (``x`` ≥ 0),
        with a scale per slice along ``axis`` (its largest magnitude / ``top``, never 0) →
        (integers, scales)."""
        largest = self.op("ReduceMax", self.op("Abs", x) if signed else x, axes=[axis], keepdims=1)
        scale = self.op(
            "Div",
            self.op("Max", largest, self.const("tiny", np.float32(1e-30))),
            # (names as in the graphs exported so far, the shipped one included)
            self.const("w_max" if signed else "u8_max", np.float32(top)),
        )
        return self.op("Cast", self.op("Round", self.op("Div", x, scale)), to=to), scale

    def op(self, op_type: str, *inputs: str, domain: str = "", name: str = "", **attrs) -> str:
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(
            helper.make_node(
                op_type, list(inputs), [out], name=name or self.scope + out, domain=domain, **attrs
            )
        )
        return out

    def linear(self, x: str, dense, name: str) -> str:
        """``x @ W.T + b`` of a torch ``nn.Linear``; the MatMul node is named ``name.matmul``."""
        w = self.const(f"{name}.w", _np(dense.weight).T.copy())
        mm = self.op("MatMul", x, w, name=f"{name}.matmul")
        return self.op("Add", mm, self.const(f"{name}.b", _np(dense.bias)))


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def build_joint(late, int8: bool) -> onnx.ModelProto:
    """The joint graph of ``late`` (a :class:`~reranker.training.latebert.LateBert`). ``int8``:
    the products' attention step in integer matrix products (:func:`_products`); the other
    matrix products stay float32 here (the exporter quantises them dynamically afterwards)."""
    last = late.layers[-1]
    att = last.attention.self
    nh, dh = late.heads, late.head_dim
    hidden = nh * dh
    g = _Graph()
    f32 = TensorProto.FLOAT

    # ---- the query: [CLS] query vector, keys/values of its tokens, its own attention terms
    cls = g.op("Gather", "query_states", g.const("zero", np.array(0, np.int64)), axis=1)
    scale = 1.0 / math.sqrt(dh)
    wq = _np(att.query.weight).T * scale
    bq = _np(att.query.bias) * scale
    qv = g.op("Add", g.op("MatMul", cls, g.const("q.w", wq)), g.const("q.b", bq))  # (Q, H)
    qv3 = g.op("Reshape", qv, g.const("shape_q3", np.array([-1, nh, dh], np.int64)))
    kq = g.linear("query_states", att.key, "k")  # (Q, nq, H)
    vq = g.linear("query_states", att.value, "v")
    shape4 = g.const("shape_4", np.array([0, 0, nh, dh], np.int64))
    qv4 = g.op("Unsqueeze", qv3, g.const("axis_1", np.array([1], np.int64)))
    sq = g.op(
        "ReduceSum",
        g.op("Mul", g.op("Reshape", kq, shape4), qv4),
        g.const("axis_3", np.array([3], np.int64)),
        keepdims=0,
    )  # (Q, nq, nh)
    maskf = g.op("Cast", "query_mask", to=f32)
    bias = g.op(
        "Mul", g.op("Sub", maskf, g.const("one", np.float32(1.0))), g.const("big", np.float32(1e9))
    )
    sq = g.op("Add", sq, g.op("Unsqueeze", bias, g.const("axis_2", np.array([2], np.int64))))
    mq = g.op("ReduceMax", sq, axes=[1], keepdims=1)  # (Q, 1, nh)
    eq = g.op("Exp", g.op("Sub", sq, mq))
    den_q = g.op("ReduceSum", eq, "axis_1", keepdims=0)  # (Q, nh)
    num_q = g.op(
        "ReduceSum",
        g.op("Mul", g.op("Unsqueeze", eq, "axis_3"), g.op("Reshape", vq, shape4)),
        "axis_1",
        keepdims=0,
    )
    # per query and head: q · b_k − max score (added to every product token's q · (W_k x))
    bk3 = _np(att.key.bias).reshape(nh, dh)
    qbk = g.op("ReduceSum", g.op("Mul", qv3, g.const("k.b3", bk3)), "axis_2", keepdims=0)
    offset = g.op("Sub", qbk, g.op("Squeeze", mq, "axis_1"))  # (Q, nh)

    g.scope = PRODUCTS_SCOPE
    den_p, num_p = _products(g, att, qv3, offset, nh, dh, int8)
    g.scope = ""
    bv3 = _np(att.value.bias).reshape(nh, dh)
    num = g.op(
        "Add",
        g.op("Add", num_p, g.op("Mul", g.op("Unsqueeze", den_p, "axis_2"), g.const("v.b3", bv3))),
        g.op("Gather", num_q, "pair_query"),
    )
    den = g.op("Add", den_p, g.op("Gather", den_q, "pair_query"))
    ctx = g.op(
        "Reshape",
        g.op("Div", num, g.op("Unsqueeze", den, "axis_2")),
        g.const("shape_bh", np.array([-1, hidden], np.int64)),
    )  # (B, H)

    # ---- the rest of the last layer at [CLS], pooler, classifier: one row per pair
    out = last.attention.output
    resid = g.op("Gather", cls, "pair_query")
    h1 = g.op(
        "LayerNormalization",
        g.op("Add", g.linear(ctx, out.dense, "o"), resid),
        g.const("ln1.g", _np(out.LayerNorm.weight)),
        g.const("ln1.b", _np(out.LayerNorm.bias)),
        axis=-1,
        epsilon=float(out.LayerNorm.eps),
    )
    f = g.linear(h1, last.intermediate.dense, "i")
    gelu = g.op(
        "Mul",
        g.op("Mul", f, g.const("half", np.float32(0.5))),
        g.op(
            "Add", g.op("Erf", g.op("Div", f, g.const("sqrt2", np.float32(math.sqrt(2.0))))), "one"
        ),
    )
    ln2 = last.output.LayerNorm
    h2 = g.op(
        "LayerNormalization",
        g.op("Add", g.linear(gelu, last.output.dense, "o2"), h1),
        g.const("ln2.g", _np(ln2.weight)),
        g.const("ln2.b", _np(ln2.bias)),
        axis=-1,
        epsilon=float(ln2.eps),
    )
    if late.pooler is not None:
        h2 = g.op("Tanh", g.linear(h2, late.pooler.dense, "pool"))
    g.linear(h2, late.classifier, "cls")
    g.nodes[-1].output[0] = "logits"

    i64, u8 = TensorProto.INT64, TensorProto.UINT8
    inputs = [
        helper.make_tensor_value_info("query_states", f32, ["queries", "query_tokens", hidden]),
        helper.make_tensor_value_info("query_mask", i64, ["queries", "query_tokens"]),
        helper.make_tensor_value_info("product_states", u8, ["tokens", hidden]),
        helper.make_tensor_value_info("product_scales", f32, ["tokens", 1]),
        helper.make_tensor_value_info("token_pair", i64, ["tokens"]),
        helper.make_tensor_value_info("pair_query", i64, ["pairs"]),
    ]
    graph = helper.make_graph(
        g.nodes,
        "late_joint_packed",
        inputs,
        [helper.make_tensor_value_info("logits", f32, ["pairs", 1])],
        g.inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if int8:
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="kd-reranker")
    model.ir_version = 8
    return model


def _products(g, att, qv3, offset, nh, dh, int8: bool):
    """The attention step at the query's ``[CLS]`` over the product tokens, without their keys
    and values → per pair and head the sum of the exponentials (``(B, nh)``) and of the
    exponential-weighted values, bias left out (``(B, nh, dh)``).

    - A token's score is ``q_h · (W_k x + b_k)_h = x · (W_k,h q_h) + q_h · b_k,h``: the
      per-query matrix ``U = [W_k,h q_h]_h`` (hidden × heads) scores the stored states directly.
    - ``Σ_t p_t,h (W_v x_t)_h = (Σ_t p_t,h x_t) W_v,h``: each product's states are summed with
      its attention weights first, one small matrix product per product over its tokens, then
      projected once per product and head.

    The tokens are read into a ``(B, L, hidden)`` batch padded to the longest product (one
    ``Gather``; the pads get zero weight). ``int8``: ``x · U`` as uint8 states × ``U`` cut to
    7-bit integers per column, and the weighted sums as 8-bit weights (per pair and head, of
    their largest) × uint8 states; else float32 on the states."""
    hidden = nh * dh
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    wk3 = _np(att.key.weight).T.reshape(hidden, nh, dh)
    u = g.op(
        "ReduceSum",
        g.op("Mul", g.op("Unsqueeze", qv3, "axis_1"), g.const("k.w3", wk3)),
        "axis_3",
        keepdims=0,
    )  # (Q, H, nh)
    u = g.op(
        "Reshape",
        g.op("Transpose", u, perm=[1, 0, 2]),
        g.const("shape_h_any", np.array([hidden, -1], np.int64)),
    )  # (H, Q * nh)

    # the packed tokens → (B, L, ·) padded per product (pads read one extra row)
    n_pair = g.op("Shape", "pair_query")
    n_tok = g.op("Shape", "token_pair")
    ones = g.op("ConstantOfShape", n_tok, value=helper.make_tensor("one_f", f32, [1], [1.0]))
    zeros_b = g.op("ConstantOfShape", n_pair, value=helper.make_tensor("z_b", f32, [1], [0.0]))
    lengths = g.op(
        "Cast",
        g.op(
            "ScatterND", zeros_b, g.op("Unsqueeze", "token_pair", "axis_1"), ones, reduction="add"
        ),
        to=i64,
    )  # (B,) tokens per pair
    zero_i = g.const("zero_i", np.array(0, np.int64))
    start = g.op("CumSum", lengths, zero_i, exclusive=1)
    pos = g.op(
        "Range",
        zero_i,
        g.op("ReduceMax", lengths, keepdims=0),
        g.const("one_i", np.array(1, np.int64)),
    )  # (L,)
    pos = g.op("Unsqueeze", pos, g.const("axis_0", np.array([0], np.int64)))
    valid = g.op("Less", pos, g.op("Unsqueeze", lengths, "axis_1"))  # (B, L)
    rows = g.op(
        "Where",
        valid,
        g.op("Add", g.op("Unsqueeze", start, "axis_1"), pos),
        g.op("Squeeze", n_tok, "axis_0"),
    )
    azp = g.const("a_zp", np.array(ZERO_POINT, np.uint8))
    pad_state = g.op("Expand", azp, g.const("shape_1h", np.array([1, hidden], np.int64)))
    xp = g.op("Gather", g.op("Concat", "product_states", pad_state, axis=0), rows, axis=0)
    pad_scale = g.const("zero_scale", np.zeros((1, 1), np.float32))
    xs = g.op(
        "Gather", g.op("Concat", "product_scales", pad_scale, axis=0), rows, axis=0
    )  # (B, L, 1)

    # scores of every token against every query's heads, then each pair's own query's
    if int8:
        # U per column to 7 bits, u_scale (1, Q * nh)
        u_int, u_scale = g.dynamic_int(u, 0, WEIGHT_MAX, TensorProto.INT8, signed=True)
        scores = g.op(
            "MatMulIntegerToFloat",
            xp,
            u_int,
            g.const("a_scale", np.array(1.0, np.float32)),
            g.op("Reshape", u_scale, g.const("shape_any", np.array([-1], np.int64))),
            azp,
            domain="com.microsoft",
        )
    else:
        zp = g.const("zp_f", np.float32(ZERO_POINT))
        xf = g.op("Sub", g.op("Cast", xp, to=f32), zp)  # the stored int8 states
        scores = g.op("MatMul", xf, u)
    sp_all = g.op(
        "Reshape", scores, g.const("shape_blqh", np.array([0, 0, -1, nh], np.int64))
    )  # (B, L, Q, nh)
    sel = g.op(
        "Expand",
        g.op("Reshape", "pair_query", g.const("shape_b111", np.array([-1, 1, 1, 1], np.int64))),
        g.op(
            "Concat",
            g.op("Shape", sp_all, end=2),
            g.const("one_nh", np.array([1, nh], np.int64)),
            axis=0,
        ),
    )
    sp = g.op("Squeeze", g.op("GatherElements", sp_all, sel, axis=2), "axis_2")  # (B, L, nh)
    off = g.op("Unsqueeze", g.op("Gather", offset, "pair_query"), "axis_1")  # (B, 1, nh)
    sp = g.op("Add", g.op("Mul", sp, xs), off)
    ep = g.op(
        "Mul",
        g.op("Exp", g.op("Min", sp, g.const("guard", np.float32(EXP_GUARD)))),
        g.op("Unsqueeze", g.op("Cast", valid, to=f32), "axis_2"),
    )  # (B, L, nh), 0 at pads
    den_p = g.op("ReduceSum", ep, "axis_1", keepdims=0)  # (B, nh)

    # per pair and head: Σ_t p_t (x_t − 128) · scale_t, then the value projection per head
    w = g.op("Transpose", g.op("Mul", ep, xs), perm=[0, 2, 1])  # (B, nh, L)
    if int8:
        # the weights (≥ 0) to 8 bits of their largest per pair and head, w_scale (B, nh, 1)
        w_int, w_scale = g.dynamic_int(w, 2, 255, TensorProto.UINT8, signed=False)
        y = g.op("MatMulInteger", w_int, xp, g.const("u8_zero", np.array(0, np.uint8)), azp)
        y = g.op("Mul", g.op("Cast", y, to=f32), w_scale)  # (B, nh, H)
    else:
        y = g.op("MatMul", w, xf)  # (B, nh, H)
    wv3 = _np(att.value.weight).T.reshape(hidden, nh, dh).transpose(1, 0, 2).copy()
    num_p = g.op(
        "Transpose",
        g.op("MatMul", g.op("Transpose", y, perm=[1, 0, 2]), g.const("v.w3", wv3)),
        perm=[1, 0, 2],
    )  # (B, nh, dh)
    return den_p, num_p


def with_query_encoder(encoder: onnx.ModelProto, joint: onnx.ModelProto) -> onnx.ModelProto:
    """One graph of the query's encoder and the joint graph: inputs ``input_ids`` and
    ``attention_mask`` (the distinct queries, padded) instead of ``query_states`` and
    ``query_mask``, so a query is scored in one call into one thread pool (two sessions cost
    ~1.7 ms more per query here: their threads wait on each other)."""
    from onnx import compose

    enc = onnx.ModelProto()
    enc.CopyFrom(encoder)
    have = {o.domain for o in enc.opset_import}
    for o in joint.opset_import:
        if o.domain not in have:
            enc.opset_import.append(helper.make_opsetid(o.domain, o.version))
    enc.graph.node.append(
        helper.make_node("Identity", ["attention_mask"], ["query_mask_out"], name="query_mask")
    )
    enc.graph.output.append(
        helper.make_tensor_value_info("query_mask_out", TensorProto.INT64, ["queries", "tokens"])
    )
    enc = compose.add_prefix(enc, "query_encoder/", rename_inputs=False)
    return compose.merge_models(
        enc,
        joint,
        io_map=[
            ("query_encoder/states", "query_states"),
            ("query_encoder/query_mask_out", "query_mask"),
        ],
    )
