"""The joint graph of a late-interaction student over *packed* int8 product states.

``reranker index`` stores each product's encoder states as int8 per token (a float32 scale per
token, :func:`reranker.late.quantize_states`). Per query the joint graph gets the states of all
``k`` candidates back to back, ``(tokens, hidden)`` with no padding, and computes:

- the keys and values of every product token in **one** integer matrix product
  (``MatMulIntegerToFloat``: uint8 states × int8 weights; the per-token scale is applied after
  the head sums, to 12 numbers per token instead of 384);
- the attention step at the query's ``[CLS]`` over the query's tokens and each product's tokens:
  per-head scores of all tokens in one small matrix product against a block-diagonal form of the
  ``[CLS]`` query vector, exponentials against the query's own maximum score, and per-product sums
  with ``ScatterND`` (reduction ``add``) — so no token is padded and no tensor is copied into a
  padded batch;
- the rest of the last layer, the pooler and the classifier for each product (one row each).

The same numbers as :meth:`reranker.training.latebert.LateBert.joint` on the dequantised states
(tested to float tolerance). Built node by node with ``onnx.helper`` from the trained weights
(the torch exporter cannot express the ragged sums or the integer product).

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

from reranker.late import ZERO_POINT  # stored states: int8 + this, as uint8 (u8 × s8 kernels)

#: Integer weights of the product key/value projection use 7 bits: the AVX2 u8 × s8 kernel adds
#: pairs of products in 16 bits, and 2 × 255 × 127 would overflow them (2 × 255 × 63 does not).
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

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, domain: str = "", name: str = "", **attrs) -> str:
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [out], name=name or out, domain=domain, **attrs)
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
    the product key/value projection as an integer matrix product (else float32 on the
    dequantised states); the other matrix products stay float32 here (the exporter quantises
    them dynamically afterwards)."""
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

    # ---- the products: keys and values of every token in one matrix product each
    wk, wv = _np(att.key.weight).T, _np(att.value.weight).T
    if int8:
        one = g.const("a_scale", np.array(1.0, np.float32))
        azp = g.const("a_zp", np.array(ZERO_POINT, np.uint8))
        kv = []
        for name, w in (("k", wk), ("v", wv)):
            wi, ws = quantize_weight(w)
            kv.append(
                g.op(
                    "MatMulIntegerToFloat",
                    "product_states",
                    g.const(f"{name}.w8", wi),
                    one,
                    g.const(f"{name}.w8_scale", ws),
                    azp,
                    domain="com.microsoft",
                )
            )
        kh, vh = kv
    else:
        x = g.op(
            "Sub", g.op("Cast", "product_states", to=f32), g.const("zp_f", np.float32(ZERO_POINT))
        )
        kh = g.op("MatMul", x, g.const("k.wp", wk))
        vh = g.op("MatMul", x, g.const("v.wp", wv))
    # scores of every token against every query's heads: (T, H) @ block-diagonal (H, Q * nh)
    eye = np.zeros((nh, dh, nh), np.float32)
    for h in range(nh):
        eye[h, :, h] = 1.0
    qbd = g.op("Mul", g.op("Unsqueeze", qv3, "axis_3"), g.const("eye", eye))  # (Q, nh, dh, nh)
    qbd = g.op(
        "Reshape",
        g.op("Transpose", qbd, perm=[1, 2, 0, 3]),
        g.const("shape_bd", np.array([hidden, -1], np.int64)),
    )
    sp_all = g.op(
        "Reshape", g.op("MatMul", kh, qbd), g.const("shape_tqh", np.array([0, -1, nh], np.int64))
    )  # (T, Q, nh)
    tq = g.op("Gather", "pair_query", "token_pair")  # (T,) query row of each token
    n_tok = g.op("Shape", "token_pair")
    sel = g.op(
        "Expand",
        g.op("Reshape", tq, g.const("shape_t11", np.array([-1, 1, 1], np.int64))),
        g.op("Concat", n_tok, g.const("one_nh", np.array([1, nh], np.int64)), axis=0),
    )
    sp = g.op(
        "Reshape",
        g.op("GatherElements", sp_all, sel, axis=1),
        g.const("shape_th", np.array([-1, nh], np.int64)),
    )  # (T, nh)
    sp = g.op("Add", g.op("Mul", sp, "product_scales"), g.op("Gather", offset, tq))
    ep = g.op("Exp", g.op("Min", sp, g.const("guard", np.float32(EXP_GUARD))))  # (T, nh)

    # ---- per-product sums (tokens of a pair are contiguous; ScatterND adds them up)
    n_pair = g.op("Shape", "pair_query")
    idx = g.op("Unsqueeze", "token_pair", "axis_1")
    zeros_h = g.op(
        "ConstantOfShape",
        g.op("Concat", n_pair, g.const("nh", np.array([nh], np.int64)), axis=0),
        value=helper.make_tensor("z", f32, [1], [0.0]),
    )
    den_p = g.op("ScatterND", zeros_h, idx, ep, reduction="add")  # (B, nh)
    wp = g.op("Mul", ep, "product_scales")
    wvals = g.op("Mul", g.op("Reshape", vh, "shape_q3"), g.op("Unsqueeze", wp, "axis_2"))
    zeros_hd = g.op(
        "ConstantOfShape",
        g.op("Concat", n_pair, g.const("nh_dh", np.array([nh, dh], np.int64)), axis=0),
        value=helper.make_tensor("z2", f32, [1], [0.0]),
    )
    num_p = g.op("ScatterND", zeros_hd, idx, wvals, reduction="add")  # (B, nh, dh)
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
