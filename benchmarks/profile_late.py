"""Where a late student's query time goes, kernel by kernel, and why its int8 arithmetic stays
below the machine's peak.

    python benchmarks/profile_late.py --queries ../shared/data/homedepot/dev.parquet \\
        [--model MODEL_DIR] [--variant fp32|int8] [--k 100] [--n-queries 30] [--json out.json]

On the demo catalog with the first stage's top-k of dev queries (candidate states stored as
``reranker index`` stores them), for one variant of the model (default: the shipped int8):

1. ``score_ids`` timed plainly (no profiler): p50 and mean per query, the model's arithmetic per
   query (as ``bench_rerank.py`` counts it) over the mean time, against the peak of a large
   matrix product measured in the same run (``bench_rerank.measure_peak``);
2. the same calls with ONNX Runtime's per-kernel profiler on the joint graph, the kernels grouped
   into the query's encoder, the products' attention step (a folded graph: every kernel of it,
   its small matrix products and its element-wise, gather and padding steps; an older graph:
   its two key/value matrix products, the rest of the step counted in "rest"), the ``[CLS]``
   layer's matrix products (one row per candidate) and the rest (the query's last-layer terms,
   layer norms, GELU, ...), each group's ms per query and its operations per second. The
   profiler adds its own cost to every kernel, most to small ones, so the groups add up to more
   than the plain time;
3. the int8 matrix product of the query encoder's shape (a few rows: the query's tokens) against
   large ones: operations per second of ``DynamicQuantizeMatMul`` with 384 × 384 weights for
   1 to 2,000 rows, in a chain of 30 as in a 5-layer encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from _common import is_folded, late_flop_parts
from bench_rerank import candidate_states, dev_candidates, measure_peak

from reranker import BM25Index, open_model
from reranker.catalog import read_catalog
from reranker.late import PRODUCTS_SCOPE
from reranker.pipeline import PACKAGED_MODEL_DIR

GROUPS = (
    "query encoder",
    "products' attention step",
    "product keys/values",
    "[CLS] layer products",
    "rest",
)


def product_kv_nodes(joint_path: Path) -> set[str]:
    """Names of the nodes of a graph exported before the fold (round 5) that multiply the
    product states by the key/value weights (the ones reading ``k.w8``/``v.w8``/``k.wp``/``v.wp``).
    """
    import onnx

    weights = {"k.w8", "v.w8", "k.wp", "v.wp"}
    graph = onnx.load(str(joint_path), load_external_data=False).graph
    return {n.name for n in graph.node if weights & set(n.input)}


def group_of(node: str, kv_nodes: set[str]) -> str:
    if node.startswith("query_encoder/"):
        return "query encoder"
    if node.startswith(PRODUCTS_SCOPE):
        return "products' attention step"
    if node in kv_nodes:
        return "product keys/values"
    if node.removeprefix("fused ").split(".")[0] in ("o", "i", "o2", "pool") and "matmul" in node:
        return "[CLS] layer products"
    return "rest"


def small_m(threads: int) -> list[dict]:
    """GOP/s of a chain of 30 int8 ``DynamicQuantizeMatMul`` (384 × 384 weights) per row count."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(30):
        inits += [
            numpy_helper.from_array(rng.integers(-127, 127, (384, 384), dtype=np.int8), f"w{i}"),
            numpy_helper.from_array(np.array(1e-3, np.float32), f"s{i}"),
            numpy_helper.from_array(np.array(0, np.int8), f"z{i}"),
        ]
        nodes.append(
            helper.make_node(
                "DynamicQuantizeMatMul",
                [x, f"w{i}", f"s{i}", f"z{i}"],
                [f"y{i}"],
                domain="com.microsoft",
            )
        )
        x = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 384])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["m", 384])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts)
    out = []
    for m in (1, 7, 16, 64, 256, 2000):
        a = rng.standard_normal((m, 384)).astype(np.float32) * 0.05
        for _ in range(5):
            sess.run(None, {"x": a})
        times = []
        for _ in range(max(20, 2000 // m)):
            t0 = time.perf_counter()
            sess.run(None, {"x": a})
            times.append(time.perf_counter() - t0)
        sec = float(np.median(times)) / 30
        out.append({"rows": m, "us_per_product": sec * 1e6, "gops": 2 * m * 384 * 384 / sec / 1e9})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(PACKAGED_MODEL_DIR))
    ap.add_argument("--catalog", default="demo/products.parquet")
    ap.add_argument("--queries", required=True, help="Parquet file with a 'query' column (dev)")
    ap.add_argument("--variant", help="fp32 or int8 (default: the model's default)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--n-queries", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5, help="passes over the queries, per mode")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()

    model = open_model(args.model, threads=args.threads, variant=args.variant)
    if model.config.architecture != "late":
        raise SystemExit(f"{args.model} is not a late-interaction model")
    arch = model.config.metadata["architecture"]
    index = BM25Index.build(read_catalog(args.catalog))
    queries, rows = dev_candidates(index, args.queries, args.k, args.n_queries)
    states = candidate_states(model, index, rows)
    calls = [(model.query_ids(q), states.rows(rs)) for q, rs in zip(queries, rows, strict=True)]
    folded = is_folded(model.config)
    parts = [late_flop_parts(arch, len(q), [len(p) for p in ps], folded) for q, ps in calls]
    ops = [sum(p.values()) for p in parts]
    tokens = float(np.mean([sum(len(p) for p in ps) for _, ps in calls]))

    peak = measure_peak(args.threads)
    fmt = "int8" if model.variant == "int8" else "fp32"
    for q, ps in calls[:10]:  # warm-up
        model.score_ids(q, ps)
    times = []
    for _ in range(args.repeats):
        for q, ps in calls:
            t0 = time.perf_counter()
            model.score_ids(q, ps)
            times.append(time.perf_counter() - t0)
    mean_s = float(np.mean(times))
    plain = {
        "p50_ms": float(np.median(times) * 1e3),
        "mean_ms": mean_s * 1e3,
        "gop_per_query": float(np.mean(ops)) / 1e9,
        "of_peak": float(np.mean(ops)) / mean_s / 1e9 / peak[fmt],
    }

    with tempfile.TemporaryDirectory() as tmp:
        # the joint graph again, made as the model makes it, with the profiler on
        joint = model.model_dir / model.config.files[model.variant]
        model.session = model._session(
            joint,
            args.threads,
            {"enable_profiling": True, "profile_file_prefix": str(Path(tmp) / "joint")},
        )
        for _ in range(args.repeats):
            for q, ps in calls:
                model.score_ids(q, ps)
        events = json.loads(Path(model.session.end_profiling()).read_text())
    runs = sum(1 for e in events if e.get("name") == "model_run")
    kv_nodes = set() if folded else product_kv_nodes(joint)  # a graph from before the fold
    per_group: dict[str, float] = defaultdict(float)
    kernels: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            g = group_of(e["name"][: -len("_kernel_time")], kv_nodes)
            per_group[g] += e["dur"] / 1e3 / runs
            kernels[g] += 1
    ops_mean = {g: float(np.mean([p[g] for p in parts])) for g in GROUPS if g in parts[0]}
    profile = {
        g: {
            "ms": per_group[g],
            "kernels": kernels[g] / runs,
            **(
                {
                    "gops": ops_mean[g] / per_group[g] / 1e6,
                    "of_peak": ops_mean[g] / per_group[g] / 1e6 / peak[fmt],
                }
                if g in ops_mean and per_group[g]
                else {}
            ),
        }
        for g in GROUPS
        if kernels[g] or g in ops_mean
    }
    result = {
        "model": model.name,
        "variant": model.variant,
        "threads": args.threads,
        "k": args.k,
        "queries": len(calls),
        "product_tokens_per_query": tokens,
        "peak": peak,
        "plain": plain,
        "profile_ms_per_query": profile,
        "small_m_int8": small_m(args.threads),
    }
    print(
        f"{model.name} {model.variant}, k={args.k}, {len(calls)} queries, "
        f"{tokens:.0f} product tokens per query; peak {fmt} {peak[fmt]:.1f} G(FL)OP/s"
    )
    print(
        f"plain: p50 {plain['p50_ms']:.2f} ms, mean {plain['mean_ms']:.2f} ms, "
        f"{plain['gop_per_query']:.3f} GOP per query, {plain['of_peak']:.0%} of peak"
    )
    print("\n| part (profiled) | kernels | ms per query | GOP/s | of peak |")
    print("|---|---|---|---|---|")
    for g, p in profile.items():
        rate = f"{p['gops']:.0f} | {p['of_peak']:.0%}" if "gops" in p else "| "
        print(f"| {g} | {p['kernels']:.0f} | {p['ms']:.2f} | {rate} |")
    total = sum(p["ms"] for p in profile.values())
    print(f"| all kernels | {sum(p['kernels'] for p in profile.values()):.0f} | {total:.2f} | | |")
    print("\n| rows | µs per 384×384 int8 product | GOP/s | of peak |")
    print("|---|---|---|---|")
    for r in result["small_m_int8"]:
        print(
            f"| {r['rows']} | {r['us_per_product']:.1f} | {r['gops']:.0f} | "
            f"{r['gops'] / peak['int8']:.0%} |"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
