"""Committed teacher scores as compact Parquet shards, and their label distribution.

    python -m reranker.training.shards SCORES.parquet OUT_DIR NAME [--rows 60000]

writes ``OUT_DIR/NAME-00000.parquet``, ... (zstd; at most ``rows`` rows each, whole queries kept
together, the input's order) and ``OUT_DIR/NAME-distribution.json``: per ``source`` (and over
all), the count and the quantiles of every score column, and of the ensemble's probability.
A later session distils from the shards without the teacher (``reranker distill --augmented``
reads one file: concatenate them with :func:`read_shards`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def write_shards(table: pa.Table, out_dir: Path, name: str, rows: int = 60_000) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{name}-[0-9][0-9][0-9][0-9][0-9].parquet"):
        old.unlink()
    queries = table.column("query").to_pylist()
    paths, start = [], 0
    while start < table.num_rows:
        end = min(start + rows, table.num_rows)
        while end < table.num_rows and queries[end] == queries[end - 1]:
            end += 1  # a query's rows stay in one shard
        path = out_dir / f"{name}-{len(paths):05d}.parquet"
        pq.write_table(table.slice(start, end - start), path, compression="zstd")
        paths.append(path)
        start = end
    return paths


def read_shards(out_dir: str | Path, name: str) -> pa.Table:
    paths = sorted(Path(out_dir).glob(f"{name}-[0-9][0-9][0-9][0-9][0-9].parquet"))
    return pa.concat_tables([pq.read_table(p) for p in paths])


def distribution(table: pa.Table) -> dict:
    cols = [c for c in table.column_names if c == "score" or c.startswith("score_")]
    groups = {"all": table}
    if "source" in table.column_names:
        for s in sorted(set(table.column("source").to_pylist())):
            groups[s] = table.filter(pc.equal(table.column("source"), s))
    out = {}
    for g, t in groups.items():
        entry: dict = {"pairs": t.num_rows, "queries": len(set(t.column("query").to_pylist()))}
        for c in cols:
            v = t.column(c).to_numpy().astype(np.float64)
            entry[c] = {
                "mean": float(v.mean()),
                "quantiles_10_50_90": [float(x) for x in np.percentile(v, [10, 50, 90])],
            }
        if "score" in cols:
            p = 1 / (1 + np.exp(-t.column("score").to_numpy().astype(np.float64)))
            entry["probability"] = {
                "mean": float(p.mean()),
                "share_above_0.5": float((p > 0.5).mean()),
                "histogram_10_bins": np.histogram(p, bins=10, range=(0, 1))[0].tolist(),
            }
        out[g] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scores")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--rows", type=int, default=60_000)
    args = ap.parse_args()
    table = pq.read_table(args.scores)
    paths = write_shards(table, args.out_dir, args.name, args.rows)
    dist = distribution(table)
    (args.out_dir / f"{args.name}-distribution.json").write_text(json.dumps(dist, indent=2))
    print(f"{table.num_rows} rows in {len(paths)} shard(s) under {args.out_dir}")


if __name__ == "__main__":
    main()
