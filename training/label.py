"""Score a pair file with a teacher, in shards that survive a killed run.

Output ``OUT.parquet`` (query, product_id, score, plus the input's other columns). While running,
shards of ``shard_size`` input rows are written atomically to ``OUT.parquet.shards/``; a rerun with
the same input and teacher skips finished shards, so a kill loses at most the shard in progress
and never duplicates a row. When every shard is done they are merged into ``OUT.parquet``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from reranker.errors import RerankerError
from reranker.index.store import sha256_file
from reranker.training.data import catalog_texts, read_pairs, texts_for
from reranker.training.precision import autocast, resolve_precision

REQUIRED = ("query", "product_id")


class TorchScorer:
    """A Hugging Face sequence-classification model scored in torch (raw logit).

    Pairs are scored in batches of similar length (little padding); ``precision`` is ``fp32``,
    ``bf16`` (autocast) or ``auto`` (bf16 where the CPU has it natively, see ``precision``)."""

    def __init__(
        self, path: str, max_length: int = 64, batch_size: int = 64, precision: str = "fp32"
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from reranker.training.precision import resolve_precision
        from reranker.training.teacher import encode_pairs

        self.torch = torch
        self._encode = encode_pairs
        self.precision = resolve_precision(precision, inference=True)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if self.precision == "bf16-linear":
            from reranker.training.precision import bf16_linear

            bf16_linear(self.model)
        self.max_length = max_length
        self.batch_size = batch_size
        self.sort_by_length = True  # batches of similar length (little padding)

    def __call__(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(queries), dtype=np.float32)
        lengths = [len(q) + len(t) for q, t in zip(queries, texts, strict=True)]
        order = (
            np.argsort(lengths, kind="stable") if self.sort_by_length else np.arange(len(queries))
        )
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self._encode(
                self.tokenizer, [queries[i] for i in idx], [texts[i] for i in idx], self.max_length
            )
            with self.torch.inference_mode(), autocast(self.precision):
                out[idx] = self.model(**enc).logits[:, 0].float().numpy()
        return out


class OnnxScorer:
    """A runtime model directory (``reranker export``) scored with ONNX Runtime (raw logit)."""

    def __init__(self, path: str, variant: str | None = None) -> None:
        from reranker.crossencoder import CrossEncoder

        self.model = CrossEncoder(path, variant=variant, batch_size=64)

    def __call__(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        # all pairs of a shard at once: batches of similar length across queries, little padding
        return self.model.score_pairs(list(queries), list(texts)).raw


@dataclass(frozen=True)
class LabelReport:
    output: Path
    rows: int
    shards_done_before: int
    seconds: float


def label_pairs(
    pairs_path: str | Path,
    teacher: str | Path,
    catalog: str | Path,
    output: str | Path,
    *,
    fields: Sequence[str] | None = None,
    backend: str = "auto",
    variant: str | None = None,
    max_length: int = 64,
    shard_size: int = 2048,
    precision: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> LabelReport:
    """Score every (query, product_id) of ``pairs_path`` with ``teacher``; resumable."""
    start = time.perf_counter()
    pairs_path, teacher, output = Path(pairs_path), Path(teacher), Path(output)
    if output.exists() and not overwrite:
        raise RerankerError(f"{output} exists; pass --overwrite to replace it")
    table = read_pairs(pairs_path, REQUIRED)

    is_onnx = (teacher / "reranker.json").is_file()
    if backend == "auto":
        backend = "onnx" if is_onnx else "torch"
    if backend == "onnx" and not is_onnx:
        raise RerankerError(f"{teacher} is not a runtime model directory (no reranker.json)")
    if backend == "torch" and not (teacher / "config.json").is_file():
        raise RerankerError(f"{teacher} is not a Hugging Face model directory (no config.json)")
    if fields is None:
        fields = _teacher_fields(teacher, backend)
    precision = resolve_precision(precision, inference=True) if backend == "torch" else "fp32"

    shard_dir = output.with_name(output.name + ".shards")
    manifest = {
        "pairs": str(pairs_path),
        "pairs_sha256": sha256_file(pairs_path),
        "teacher": str(teacher.resolve()),
        "backend": backend,
        "variant": variant,
        "fields": list(fields),
        "max_length": max_length,
        "precision": precision,
        "shard_size": shard_size,
        "rows": table.num_rows,
    }
    if shard_dir.exists():
        old = (
            json.loads((shard_dir / "label.json").read_text())
            if (shard_dir / "label.json").is_file()
            else None
        )
        if old != manifest:
            if not overwrite:
                raise RerankerError(
                    f"{shard_dir} holds shards of a different run (other input, teacher or "
                    "settings); pass --overwrite to start over"
                )
            shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    (shard_dir / "label.json").write_text(json.dumps(manifest, indent=2))

    n_shards = (table.num_rows + shard_size - 1) // shard_size
    done = {i for i in range(n_shards) if (shard_dir / f"part-{i:05d}.parquet").is_file()}
    todo = [i for i in range(n_shards) if i not in done]
    texts = catalog_texts(str(catalog), list(fields)) if todo else {}
    scorer = (
        (
            OnnxScorer(str(teacher), variant)
            if backend == "onnx"
            else TorchScorer(str(teacher), max_length, precision=precision)
        )
        if todo
        else None
    )
    queries = table.column("query").to_pylist()
    pids = [str(p) for p in table.column("product_id").to_pylist()]
    all_texts = texts_for(pids, texts, pairs_path) if todo else []
    done_rows = sum(min(shard_size, table.num_rows - i * shard_size) for i in done)
    bar = tqdm(
        total=table.num_rows,
        initial=done_rows,
        desc=f"labelling ({backend} {variant if backend == 'onnx' else precision})",
        unit="pair",
        disable=not progress,
        smoothing=0.1,
    )
    for i in todo:
        lo, hi = i * shard_size, min((i + 1) * shard_size, table.num_rows)
        scores = scorer(queries[lo:hi], all_texts[lo:hi])
        part = table.slice(lo, hi - lo).append_column("score", pa.array(scores, pa.float32()))
        tmp = shard_dir / f".part-{i:05d}.{os.getpid()}.tmp"
        pq.write_table(part, tmp)
        os.replace(tmp, shard_dir / f"part-{i:05d}.parquet")
        bar.update(hi - lo)
    bar.close()

    parts = [pq.read_table(shard_dir / f"part-{i:05d}.parquet") for i in range(n_shards)]
    merged = pa.concat_tables(parts)
    if merged.num_rows != table.num_rows:
        raise RerankerError(
            f"shards in {shard_dir} hold {merged.num_rows} rows, expected {table.num_rows}"
        )
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    pq.write_table(merged, tmp, compression="zstd")
    os.replace(tmp, output)
    shutil.rmtree(shard_dir)
    return LabelReport(output, merged.num_rows, len(done), time.perf_counter() - start)


def _teacher_fields(teacher: Path, backend: str) -> list[str]:
    if backend == "onnx":
        return list(json.loads((teacher / "reranker.json").read_text()).get("fields", []))
    args = teacher / "teacher_args.json"
    if args.is_file():
        return list(json.loads(args.read_text()).get("fields", []))
    raise RerankerError(f"cannot tell which product fields {teacher} reads; pass --fields")
