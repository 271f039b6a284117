"""Teacher labelling throughput and agreement: fp32 against bf16 autocast, in torch.

    python benchmarks/bench_label.py --teacher TEACHER_DIR \
        --pairs ../shared/data/homedepot/dev.parquet \
        --catalog ../shared/data/homedepot/products.parquet [--n 2000] [--json out.json]

Scores a seeded sample of whole queries of a pair file (the teacher's product fields, max length
64, batches of 64) in three ways: fp32 with batches in file order (each padded to its longest
pair), fp32 with length-sorted batches (what `reranker label` does), and bf16 autocast with
length-sorted batches (`--precision bf16`; native on CPUs with AVX512-BF16 or AMX); with
`--mixed` also bf16 in some linear layers only (the feed-forward ones; all but the attention's
query and key projections; every one but the head, `--precision bf16-linear`), the rest fp32.
Reports pairs/s and, against the fp32 scores, the mean per-query Spearman correlation and the
share of pairs of a query ordered alike.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from reranker.training.data import catalog_texts
from reranker.training.label import TorchScorer, _teacher_fields
from reranker.training.precision import bf16_linear, cpu_has_bf16


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return 1.0
    return float(np.corrcoef(ra, rb)[0, 1])


def pair_agreement(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    same = total = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            if a[i] == a[j]:  # a tie of the reference orders nothing
                continue
            total += 1
            same += (a[i] - a[j]) * (b[i] - b[j]) > 0
    return same, total


def is_ffn(name: str) -> bool:
    """A transformer layer's feed-forward products (BERT/MPNet naming)."""
    return name.endswith("intermediate.dense") or (
        name.endswith(".output.dense") and ".attention." not in name
    )


def is_not_query_key(name: str) -> bool:
    """Every encoder product except the attention's query and key projections (whose rounding
    moves the attention weights) and the classifier."""
    return ".encoder." in name and not name.endswith((".q", ".k", ".query", ".key"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--n", type=int, default=2000, help="about this many pairs (whole queries)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument(
        "--mixed",
        action="store_true",
        help="also bf16 for some linear layers only (the feed-forward ones; all but the "
        "attention's query and key projections; every one), the rest (the attention's score and "
        "mixing products among them) fp32",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t = pq.read_table(args.pairs)
    queries = t.column("query").to_pylist()
    pids = [str(p) for p in t.column("product_id").to_pylist()]
    order = np.random.default_rng(13).permutation(sorted(set(queries)))
    keep, n = set(), 0
    by_query = {}
    for i, q in enumerate(queries):
        by_query.setdefault(q, []).append(i)
    for q in order:
        if n >= args.n:
            break
        keep.add(q)
        n += len(by_query[q])
    rows = [i for i in range(len(queries)) if queries[i] in keep]
    texts_of = catalog_texts(args.catalog, _teacher_fields(Path(args.teacher), "torch"))
    qs = [queries[i] for i in rows]
    ts = [texts_of[pids[i]] for i in rows]

    results: dict = {
        "teacher": args.teacher,
        "pairs": len(rows),
        "queries": len(keep),
        "threads": args.threads,
        "cpu_bf16": cpu_has_bf16(),
        "cpu": Path("/proc/cpuinfo")
        .read_text()
        .split("model name")[1]
        .split("\n")[0]
        .strip("\t: "),
    }
    scores = {}
    runs = [
        ("fp32_file_order", "fp32", False, None),
        ("fp32_length_sorted", "fp32", True, None),
        ("bf16_length_sorted", "bf16", True, None),
    ]
    if args.mixed:
        runs += [
            ("bf16_ffn_only", "fp32", True, is_ffn),
            ("bf16_except_query_key", "fp32", True, is_not_query_key),
            ("bf16_every_linear", "bf16-linear", True, None),  # `--precision bf16-linear`
        ]
    for name, precision, sort, which in runs:
        scorer = TorchScorer(args.teacher, 64, 64, precision=precision)
        if not sort:  # batches in file order: no length sorting
            scorer.sort_by_length = False
        if which is not None:
            n = bf16_linear(scorer.model, which)
            results.setdefault("mixed_layers", {})[name] = n
        scorer(qs[:64], ts[:64])  # warm-up
        start = time.perf_counter()
        scores[name] = scorer(qs, ts)
        seconds = time.perf_counter() - start
        results[name] = {"seconds": seconds, "pairs_per_s": len(rows) / seconds}
        print(f"{name}: {len(rows) / seconds:.1f} pairs/s", flush=True)
    ref = scores["fp32_length_sorted"]
    groups: dict[str, list[int]] = {}
    for j, q in enumerate(qs):
        groups.setdefault(q, []).append(j)
    for name, s in scores.items():
        rhos, same, total = [], 0, 0
        for idx in groups.values():
            if len(idx) < 2:
                continue
            a, b = ref[idx], s[idx]
            rhos.append(spearman(a, b))
            x, y = pair_agreement(a, b)
            same, total = same + x, total + y
        results[name] |= {
            "spearman_per_query_mean": float(np.mean(rhos)),
            "pairs_ordered_alike": same / total,
            "max_abs_diff": float(np.abs(ref - s).max()),
        }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
