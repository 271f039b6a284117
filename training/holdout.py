"""A seeded slice of train's queries held out from every model's training.

The teacher's members train on the rest (``scripts/teacher_run.sh``); the held-out pairs choose
the ensemble's weights and calibrate students (``scripts/student_run.sh``), so neither is fitted
on pairs a model learnt from, and dev stays untouched.

    python -m reranker.training.holdout TRAIN OUT_DIR [--fraction 0.05] [--seed 13]

writes ``OUT_DIR/train_members.parquet`` and ``OUT_DIR/train_holdout.parquet``; ``--scores
FILE`` also writes ``OUT_DIR/scores_members.parquet``: the rows of FILE (e.g. the committed
teacher scores of train) whose query is not held out, and with ``--part F`` (e.g. 0.25)
``OUT_DIR/scores_part.parquet``: those of a seeded fraction F of those queries (the labelled set
of the augmentation study, which must stay affordable at ×8).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def held_out_queries(train: pa.Table, fraction: float, seed: int = 13) -> set[str]:
    queries = sorted(set(train.column("query").to_pylist()))
    order = np.random.default_rng(seed).permutation(queries)
    return set(order[: round(len(queries) * fraction)].tolist())


def _is_held(table: pa.Table, held: set[str]) -> pa.Array:
    return pc.is_in(table.column("query"), value_set=pa.array(sorted(held), pa.string()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m reranker.training.holdout")
    ap.add_argument("train")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--scores", help="also split this file's rows (same queries as train)")
    ap.add_argument("--part", type=float, help="with --scores: also a seeded part of the rest")
    a = ap.parse_args(argv)
    if not 0 < a.fraction < 1 or (a.part is not None and not 0 < a.part < 1):
        raise SystemExit("error: --fraction and --part must be between 0 and 1")
    for path in (a.train, a.scores):
        if path is not None and not Path(path).is_file():
            raise SystemExit(f"error: {path} is not a file")
    t = pq.read_table(a.train)
    if "query" not in t.column_names:
        raise SystemExit(f"error: {a.train} has no 'query' column")
    held = held_out_queries(t, a.fraction, a.seed)
    mask = _is_held(t, held)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(t.filter(pc.invert(mask)), a.out_dir / "train_members.parquet")
    pq.write_table(t.filter(mask), a.out_dir / "train_holdout.parquet")
    print(f"held out {len(held)} queries, {pc.sum(mask).as_py()} pairs")
    if a.scores:
        s = pq.read_table(a.scores)
        keep = s.filter(pc.invert(_is_held(s, held)))
        pq.write_table(keep, a.out_dir / "scores_members.parquet")
        print(f"{keep.num_rows} of {s.num_rows} scored pairs are not held out")
        if a.part:
            part = held_out_queries(keep, a.part, a.seed)
            chosen = keep.filter(_is_held(keep, part))
            pq.write_table(chosen, a.out_dir / "scores_part.parquet")
            print(f"part: {len(part)} queries, {chosen.num_rows} pairs")


if __name__ == "__main__":
    main()
