"""Rerank latency, arithmetic efficiency and quality of student variants, beside torch.

    python benchmarks/bench_rerank.py --queries ../shared/data/homedepot/dev.parquet \\
        --judged ../shared/data/homedepot/dev.parquet \\
        --model MODEL_DIR[=HF_DIR] ... [--stand-in 2:title:48 ...] --json out.json --plot out.png

For each runtime model directory (``reranker export``) and each of its variants (fp32, int8), on
the demo catalog with the first stage's top-k of dev queries (product token ids stored as
``reranker index --model`` stores them):

- rerank latency (query tokenisation + inputs + inference + scores) for k in --ks, after warm-up;
- the time breakdown of a query at k=100 (tokenise, build tensors, inference, post-processing);
- the model's matrix arithmetic per query (counted from the pair lengths and the architecture
  stored in its config) divided by the measured time, against the peak of a large fp32 / int8
  matrix product measured in the same run (ONNX Runtime, same threads);
- with HF_DIR: sentence-transformers' ``CrossEncoder.predict`` (torch fp32, its own batching) on
  the same weights and candidates, and the speed-up;
- with --judged: dev NDCG@10 and pair accuracy of every variant (and of the torch model), which
  makes the quality-vs-latency frontier (--plot).

A late-interaction student (``distill --arch late``) is measured the same way, with product
encoder states stored as ``reranker index`` stores them (only for the candidates' products, to
save time); its torch baseline is the same model run in torch the straightforward way (query and
the k products encoded per query, batches of 32).

``--stand-in LAYERS:FIELDS:MAX_LENGTH`` adds all-MiniLM-L6-v2 truncated to LAYERS with an
untrained head (latency only; FIELDS ``title`` or ``title+brand+color+material``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from _common import is_folded, late_flops, matmul_flops, stand_in_hf, stand_in_model

from reranker import BM25Index, CrossEncoder, open_model
from reranker.catalog import read_catalog
from reranker.tokens import ProductTokens


def percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


# --------------------------------------------------------------------------- machine peak
def measure_peak(threads: int, seconds: float = 2.0) -> dict:
    """GFLOP/s (fp32 MatMul) and GOP/s (int8 MatMulInteger, u8 × s8) of ONNX Runtime on large
    products: best of a few shapes, with the right-hand matrix fed per call and stored in the
    graph (a weight, which ONNX Runtime packs once, as it does the models' weights)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def graph(op, a_type, b, out_type, const):
        a = helper.make_tensor_value_info("a", a_type, ["m", "k"])
        y = helper.make_tensor_value_info("y", out_type, ["m", "n"])
        inits = [numpy_helper.from_array(b, "b")] if const else []
        inputs = [a] if const else [a, helper.make_tensor_value_info("b", b_type(b), ["k", "n"])]
        g = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], "peak", inputs, [y], inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model.SerializeToString()

    def b_type(b):
        return TensorProto.FLOAT if b.dtype == np.float32 else TensorProto.INT8

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    rng = np.random.default_rng(0)
    out = {}
    for fmt in ("fp32", "int8"):
        best = 0.0
        for m, k, n in ((4096, 1024, 1024), (2048, 384, 1536), (2048, 1536, 384), (2048, 384, 384)):
            if fmt == "fp32":
                a = rng.standard_normal((m, k), dtype=np.float32)
                b = rng.standard_normal((k, n), dtype=np.float32)
                op, a_t, o_t = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
            else:
                a = rng.integers(0, 255, (m, k), dtype=np.uint8)
                b = rng.integers(-127, 127, (k, n), dtype=np.int8)
                op, a_t, o_t = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
            for const in (False, True):
                sess = ort.InferenceSession(graph(op, a_t, b, o_t, const), opts)
                feeds = {"a": a} if const else {"a": a, "b": b}
                sess.run(None, feeds)
                runs, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds / 8:
                    sess.run(None, feeds)
                    runs += 1
                best = max(best, 2 * m * k * n * runs / (time.perf_counter() - t0) / 1e9)
        out[fmt] = best
    return out


# --------------------------------------------------------------------------- models
def rerank_latency(model, tokens, rows_per_query, queries, ks, warmup) -> dict:
    arch = model.config.metadata.get("architecture")
    cls_only = model.config.metadata.get("graph") == "cls-only last layer"
    for q, rows in list(zip(queries, rows_per_query, strict=True))[:warmup]:
        model.score_ids(model.query_ids(q), tokens.rows(rows[:100]))
    out = {}
    for k in ks:
        times, flops, parts = [], 0, {}
        for q, rows in zip(queries, rows_per_query, strict=True):
            cand = tokens.rows(rows[:k])
            t0 = time.perf_counter()
            t_q = time.perf_counter()
            qids = model.query_ids(q)
            tok_ms = (time.perf_counter() - t_q) * 1e3
            model.score_ids(qids, cand)
            times.append(time.perf_counter() - t0)
            for name, ms in (model.last_timings | {"tokenize_ms": tok_ms}).items():
                parts.setdefault(name, []).append(ms)
            if arch and model.config.architecture == "late":
                flops += late_flops(
                    arch, len(qids), [len(c) for c in cand], is_folded(model.config)
                )
            elif arch:
                flops += matmul_flops(
                    arch, model.pairs.pair_lengths([qids] * len(cand), cand), cls_only=cls_only
                )
        row = {
            "p50_ms": percentile(times, 50),
            "p99_ms": percentile(times, 99),
            "mean_ms": float(np.mean(times) * 1e3),
            "pairs_per_s": float(sum(min(k, len(r)) for r in rows_per_query) / sum(times)),
            "breakdown_mean_ms": {n: float(np.mean(v)) for n, v in parts.items()},
        }
        if arch:
            row["gflop_per_query"] = flops / len(times) / 1e9
            row["achieved_gflops"] = flops / sum(times) / 1e9
        out[k] = row
    return out


class TorchLate:
    """A late-interaction student in torch, run the plain way: per query, the query and the k
    product texts are encoded (batches of 32), then the joint layer. ``predict`` like ST's."""

    def __init__(self, hf_dir) -> None:
        import torch

        from reranker.training.latebert import LATE_FILE, LateStudent

        settings = json.loads((Path(hf_dir) / LATE_FILE).read_text())
        self.student = LateStudent(
            str(hf_dir), None, settings["max_length"], settings["query_max_length"]
        )
        self.student.model.eval()
        self.no_grad = torch.no_grad

    def predict(self, pairs, batch_size=32, show_progress_bar=False):
        import torch

        out = []
        with self.no_grad():
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                out.append(self.student.logits([chunk[0][0]], [[t for _, t in chunk]]))
        return torch.cat(out).numpy()


class StoredRows(dict):
    """Row → stored product form, for the rows a benchmark needs."""

    def rows(self, rows):
        return [self[r] for r in rows]


def dev_candidates(index, queries_path, k: int, n: int) -> tuple[list[str], list[list[int]]]:
    """``n`` distinct queries of ``queries_path`` (in a fixed random order) that retrieve at least
    ``k`` candidates, and their top-``k`` rows, so every query reranks exactly ``k``."""
    all_q = sorted(set(pq.read_table(queries_path, columns=["query"]).column(0).to_pylist()))
    queries, rows = [], []
    for i in np.random.default_rng(0).permutation(len(all_q)):
        cands = index.retrieve(all_q[i], k)
        if len(cands) >= k:
            queries.append(all_q[i])
            rows.append([c.row for c in cands])
        if len(queries) == n:
            break
    return queries, rows


def candidate_states(model, index, rows_per_query) -> StoredRows:
    """A late model's stored states (int8 per token) of the candidates' products, as an index
    stores them."""
    rows = sorted({r for rs in rows_per_query for r in rs})
    texts = [p.text(model.config.fields) for p in index.products_at(rows)]
    states = model.build_store(texts)
    return StoredRows(zip(rows, states.rows(range(len(rows))), strict=True))


def torch_latency(hf_dir, max_length, texts_per_query, queries, ks, threads, warmup) -> dict:
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder

    torch.set_num_threads(threads)
    if (Path(hf_dir) / "late_interaction.json").is_file():
        st = TorchLate(hf_dir)
    else:
        st = STCrossEncoder(str(hf_dir), num_labels=1, max_length=max_length, device="cpu")
    for q, texts in list(zip(queries, texts_per_query, strict=True))[:warmup]:
        st.predict([(q, t) for t in texts[:100]], batch_size=32, show_progress_bar=False)
    out = {}
    for k in ks:
        times = []
        for q, texts in zip(queries, texts_per_query, strict=True):
            t0 = time.perf_counter()
            st.predict([(q, t) for t in texts[:k]], batch_size=32, show_progress_bar=False)
            times.append(time.perf_counter() - t0)
        out[k] = {
            "p50_ms": percentile(times, 50),
            "p99_ms": percentile(times, 99),
            "mean_ms": float(np.mean(times) * 1e3),
        }
    return out, st


def variant_dir(model_dir: Path, work: Path, name: str, make) -> Path:
    """A copy of a model directory with one more ONNX file, ``make(fp32_path, out_path)``."""
    import shutil

    out = work / f"{model_dir.name}-{name}"
    if not out.exists():
        shutil.copytree(model_dir, out)
        make(out / "model.onnx", out / f"model.{name}.onnx")
        cfg = json.loads((out / "reranker.json").read_text())
        cfg["files"] = {name: f"model.{name}.onnx"}
        cfg["default_variant"] = name
        (out / "reranker.json").write_text(json.dumps(cfg))
    return out


def per_channel_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)


def kv_only_int8(src: Path, dst: Path) -> None:
    """int8 for the key/value projections (one row per position: the large products) only; the
    [CLS]-only products (100 rows) stay fp32, sparing their per-call quantisation."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = [n.name for n in onnx.load(str(src)).graph.node if n.op_type in ("MatMul", "Gemm")]
    keep = [n for n in nodes if n.startswith(("/key", "/value"))]
    quantize_dynamic(
        src, dst, weight_type=QuantType.QInt8, nodes_to_exclude=[n for n in nodes if n not in keep]
    )


def fused(src: Path, dst: Path, int8: bool = False) -> None:
    """onnxruntime.transformers' BERT fusions (LayerNorm, GELU, attention where it matches)."""
    from onnxruntime.transformers.optimizer import optimize_model

    arch = json.loads((src.parent / "reranker.json").read_text())["metadata"]["architecture"]
    opt = optimize_model(
        str(src), model_type="bert", num_heads=arch["heads"], hidden_size=arch["hidden"]
    )
    opt.save_model_to_file(str(dst))
    if int8:
        from onnx import TensorProto
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            dst,
            dst,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )


def sweep(
    model_dir, work, tokens, rows_per_query, queries, threads, warmup, judge=None
) -> list[dict]:
    """Runtime levers on one model at k=100: session options, batch size, quantisation."""
    cases = [
        ("int8, defaults (all optimisations, arena, batch 32)", model_dir, "int8", {}, 32),
        ("fp32, defaults", model_dir, "fp32", {}, 32),
        (
            "int8, graph optimisation basic",
            model_dir,
            "int8",
            {"graph_optimization_level": "basic"},
            32,
        ),
        (
            "int8, graph optimisation disabled",
            model_dir,
            "int8",
            {"graph_optimization_level": "disable"},
            32,
        ),
        ("int8, memory arena off", model_dir, "int8", {"enable_cpu_mem_arena": False}, 32),
        ("int8, 1 intra-op thread", model_dir, "int8", {"intra_op_num_threads": 1}, 32),
        ("int8, batch 16", model_dir, "int8", {}, 16),
        ("int8, batch 64", model_dir, "int8", {}, 64),
        ("int8, one batch of 100", model_dir, "int8", {}, 100),
        # (made lazily: a lever that fails to build is reported, not fatal)
        (
            "int8 per-channel",
            lambda: variant_dir(model_dir, work, "int8pc", per_channel_int8),
            "int8pc",
            {},
            32,
        ),
        (
            "int8 for K/V projections only ([CLS]-side products fp32)",
            lambda: variant_dir(model_dir, work, "kvint8", kv_only_int8),
            "kvint8",
            {},
            32,
        ),
        (
            "fp32 + ORT transformer fusions",
            lambda: variant_dir(model_dir, work, "fused", fused),
            "fused",
            {},
            32,
        ),
        (
            "int8 + ORT transformer fusions",
            lambda: variant_dir(model_dir, work, "fusedint8", lambda a, b: fused(a, b, int8=True)),
            "fusedint8",
            {},
            32,
        ),
    ]
    out = []
    for label, path, variant, options, batch in cases:
        options = {"intra_op_num_threads": threads} | options
        try:
            path = path() if callable(path) else path
            model = CrossEncoder(path, variant=variant, batch_size=batch, session_options=options)
        except Exception as exc:  # a lever that does not apply is reported, not fatal
            out.append({"case": label, "error": str(exc).splitlines()[0][:200]})
            print(f"  {out[-1]}", flush=True)
            continue
        lat = rerank_latency(model, tokens, rows_per_query, queries, [100], warmup)[100]
        row = {"case": label, "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"]}
        if judge is not None:
            row |= judge(model)
        out.append(row)
        print(f"  {row}", flush=True)
    return out


def length_sweep(model_dir, work, lengths, index, by_id, rows_per_query, queries, args) -> list:
    """The same weights run with shorter inputs: quality (dev) and latency at k=100."""
    import shutil

    out = []
    for length in lengths:
        d = work / f"{model_dir.name}-len{length}"
        if not d.exists():
            shutil.copytree(model_dir, d)
            cfg = json.loads((d / "reranker.json").read_text())
            cfg["max_length"] = length
            (d / "reranker.json").write_text(json.dumps(cfg))
        model = CrossEncoder(d, variant="int8", threads=args.threads)
        texts = [p.text(model.config.fields) for p in index.products_at(np.arange(len(index)))]
        tokens = ProductTokens.build(model.pairs, texts, model.token_key)
        lat = rerank_latency(model, tokens, rows_per_query, queries, [100], args.warmup)[100]
        row = {"max_length": length, "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"]}
        if args.judged:
            row |= quality(
                args.judged,
                lambda p, f: by_id[p].text(f),
                model.config.fields,
                lambda q, t, m=model: m.score(q, t).raw,
            )
        print(f"  max length {length}: {row}", flush=True)
        out.append(row)
    return out


def quality(judged_path, catalog_texts, fields, scorer) -> dict:
    from reranker.training.evaluate import evaluate, load_judged

    judged = load_judged(judged_path)
    m = evaluate(judged, lambda q, ids: scorer(q, [catalog_texts(p, fields) for p in ids]))
    return {"ndcg10": m.ndcg10, "pair_accuracy": m.pair_accuracy, "queries": m.queries}


def replot(json_paths: list[str], path: str) -> None:
    """One frontier plot of the models of several runs' JSON files."""
    merged: dict = {"models": [], "baselines": {}}
    for p in json_paths:
        result = json.loads(Path(p).read_text())
        merged["models"] += result["models"]
        merged["baselines"].update(result.get("baselines", {}))
    plot(merged, path)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--replot":  # --replot OUT.png RUN.json [RUN.json ...]
        replot(sys.argv[3:], sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", default="demo/products.parquet")
    ap.add_argument("--queries", required=True, help="Parquet file with a 'query' column (dev)")
    ap.add_argument("--judged", help="judged pairs for dev NDCG@10 / pair accuracy")
    ap.add_argument("--model", action="append", default=[], help="MODEL_DIR[=HF_DIR]")
    ap.add_argument("--stand-in", action="append", default=[], help="LAYERS:FIELDS:MAX_LENGTH")
    ap.add_argument("--ks", default="10,50,100,200")
    ap.add_argument("--n-queries", type=int, default=300)
    ap.add_argument("--torch-queries", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--sweep", action="store_true", help="runtime levers on the first model")
    ap.add_argument(
        "--max-lengths",
        default="",
        help="e.g. 32,40: the first model also run with these max lengths (quality and k=100)",
    )
    ap.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="NAME=EVAL_JSON (from `reranker eval --json`): a horizontal line on the plot",
    )
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--plot")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench-rerank-"))
    models: list[tuple[Path, Path | None]] = []
    for spec in args.model:
        onnx_dir, _, hf = spec.partition("=")
        models.append((Path(onnx_dir), Path(hf) if hf else None))
    for spec in args.stand_in:
        layers, fields, max_length = spec.split(":")
        extra = tuple(f for f in fields.split("+") if f != "title")
        models.append(
            (
                stand_in_model(work, int(layers), extra, int(max_length)),
                stand_in_hf(work, int(layers)),
            )
        )

    catalog = read_catalog(args.catalog)
    index = BM25Index.build(catalog)
    by_id = {p.id: p for p in catalog.products}
    queries, rows_per_query = dev_candidates(index, args.queries, max(ks), args.n_queries)

    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or ''}",
        "threads": args.threads,
        "queries": len(queries),
        "catalog": args.catalog,
        "peak": measure_peak(args.threads),
        "models": [],
        "baselines": {
            name: json.loads(Path(path).read_text())
            for name, _, path in (b.partition("=") for b in args.baseline)
        },
    }
    print(
        f"peak: fp32 {result['peak']['fp32']:.1f} GFLOP/s, int8 {result['peak']['int8']:.1f} GOP/s"
    )
    stand_ins = {m[0] for m in models[len(args.model) :]}  # untrained heads: latency only
    for onnx_dir, hf_dir in models:
        judged = args.judged if onnx_dir not in stand_ins else None
        probe = open_model(onnx_dir)
        if probe.config.architecture != "late":
            texts = [p.text(probe.config.fields) for p in index.products_at(np.arange(len(index)))]
            tokens = ProductTokens.build(probe.pairs, texts, probe.token_key)
        entry = {"model": probe.name, "dir": str(onnx_dir), "variants": {}}
        for variant in probe.config.files:
            model = open_model(onnx_dir, variant=variant, threads=args.threads)
            print(f"{probe.name} {variant} ...", flush=True)
            if model.config.architecture == "late":  # each variant has its own encoder
                tokens = candidate_states(model, index, rows_per_query)
            lat = rerank_latency(model, tokens, rows_per_query, queries, ks, args.warmup)
            fmt = "int8" if "int8" in variant else "fp32"
            for row in lat.values():
                if "achieved_gflops" in row:
                    row["efficiency_vs_peak"] = row["achieved_gflops"] / result["peak"][fmt]
                    # the time the model's arithmetic would take at the measured peak
                    row["limit_ms"] = row["gflop_per_query"] / result["peak"][fmt] * 1e3
            v = {"latency": lat}
            if judged:
                v["quality"] = quality(
                    judged,
                    lambda p, f: by_id[p].text(f),
                    model.config.fields,
                    lambda q, t, m=model: m.score(q, t).raw,
                )
            entry["variants"][variant] = v
        if hf_dir is not None:
            print(f"{probe.name} torch (sentence-transformers) ...", flush=True)
            n = args.torch_queries
            tq = [
                [by_id[index.ids[r]].text(probe.config.fields) for r in rows]
                for rows in rows_per_query[:n]
            ]
            lat, st = torch_latency(
                hf_dir,
                probe.config.max_length,
                tq,
                queries[:n],
                ks,
                args.threads,
                min(args.warmup, 5),
            )
            entry["torch"] = {"latency": lat, "queries": n}
            if judged:
                entry["torch"]["quality"] = quality(
                    judged,
                    lambda p, f: by_id[p].text(f),
                    probe.config.fields,
                    lambda q, t, st=st: st.predict(
                        [(q, x) for x in t], batch_size=32, show_progress_bar=False
                    ),
                )
        result["models"].append(entry)
        print_entry(entry, result["peak"])
        if args.max_lengths and len(result["models"]) == 1:
            result["max_length_sweep"] = length_sweep(
                onnx_dir,
                work,
                [int(x) for x in args.max_lengths.split(",")],
                index,
                by_id,
                rows_per_query,
                queries,
                args,
            )
        if args.sweep and len(result["models"]) == 1:
            print("runtime levers at k=100:")
            judge = None
            if judged:

                def judge(m, judged=judged):
                    return quality(
                        judged,
                        lambda pid, f: by_id[pid].text(f),
                        m.config.fields,
                        lambda q, t: m.score(q, t).raw,
                    )

            result["sweep"] = sweep(
                onnx_dir, work, tokens, rows_per_query, queries, args.threads, args.warmup, judge
            )

    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, args.plot)


def print_entry(entry, peak) -> None:
    print(f"\n{entry['model']}")
    print(
        "| variant | k | p50 ms | p99 ms | pairs/s | GFLOP/query | limit ms | GFLOP/s | of peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, v in entry["variants"].items():
        for k, r in v["latency"].items():
            print(
                f"| {variant} | {k} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['pairs_per_s']:.0f} | {r.get('gflop_per_query', float('nan')):.2f} | "
                f"{r.get('limit_ms', float('nan')):.1f} | "
                f"{r.get('achieved_gflops', float('nan')):.1f} | "
                f"{100 * r.get('efficiency_vs_peak', float('nan')):.0f}% |"
            )
    if "torch" in entry:
        for k, r in entry["torch"]["latency"].items():
            print(f"| torch (ST predict) | {k} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | | | | | |")
    for variant, v in entry["variants"].items():
        b = v["latency"].get(100, {}).get("breakdown_mean_ms")
        if b:
            print(
                f"breakdown k=100 {variant}: " + ", ".join(f"{n} {ms:.2f}" for n, ms in b.items())
            )
        if "quality" in v:
            print(
                f"dev {variant}: NDCG@10 {v['quality']['ndcg10']:.4f}, "
                f"pair accuracy {v['quality']['pair_accuracy']:.4f}"
            )
    if "torch" in entry and "quality" in entry["torch"]:
        q = entry["torch"]["quality"]
        print(f"dev torch: NDCG@10 {q['ndcg10']:.4f}, pair accuracy {q['pair_accuracy']:.4f}")


def plot(result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for metric, ax in zip(("pair_accuracy", "ndcg10"), axes, strict=True):
        for entry in result["models"]:
            for variant, v in entry["variants"].items():
                if "quality" not in v:
                    continue
                lat = v["latency"]
                x = (lat[100] if 100 in lat else lat["100"])["p50_ms"]
                ax.scatter(x, v["quality"][metric], marker="o" if variant == "int8" else "s")
                ax.annotate(
                    f"{entry['model']} {variant}",
                    (x, v["quality"][metric]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        for name, m in result.get("baselines", {}).items():
            ax.axhline(m[metric], linestyle="--", linewidth=0.8, label=name, color="C7")
        ax.axvline(30, color="grey", linestyle=":", label="30 ms target")
        ax.set_xscale("log")
        ax.set_xlabel("rerank p50 at k=100 (ms, log)")
        ax.set_ylabel(f"dev {metric}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
