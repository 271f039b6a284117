"""Committed teacher scores as compact Parquet shards, and their label distribution.

    python -m reranker.training.shards OUT_DIR NAME --member a=A.parquet --member b=B.parquet \
        --ensemble ensemble.json [--rows 60000]

joins the members' ``reranker label`` outputs of one pair file, adds the ensemble's ``score``,
and writes ``OUT_DIR/NAME-00000.parquet``, ... (zstd; at most ``rows`` rows each, whole queries
kept together, the input's order) and ``OUT_DIR/NAME-distribution.json``: per ``source`` (and
over all), the count and the quantiles of every score column, and of the ensemble's probability.
A labelling run still in progress counts with the shards it has finished (the first rows of its
input, cut to whole queries and to what every member has scored): with a query-shuffled pair
file (``reranker augment --shuffle-queries``) that part is a fair sample, and the distribution
says how many rows of the whole it holds. ``reranker distill --augmented 'OUT_DIR/NAME-*.parquet'``
reads the shards without the teacher.
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


def finished_rows(output: Path) -> tuple[pa.Table, int]:
    """A ``reranker label`` output, or, while it runs, the contiguous shards it has finished
    (the first rows of its input); with the input's total row count."""
    if output.is_file():
        t = pq.read_table(output)
        return t, t.num_rows
    shard_dir = output.with_name(output.name + ".shards")
    manifest = shard_dir / "label.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"neither {output} nor its shards ({shard_dir}) exist")
    total = int(json.loads(manifest.read_text())["rows"])
    parts = []
    while (shard_dir / f"part-{len(parts):05d}.parquet").is_file():
        parts.append(pq.read_table(shard_dir / f"part-{len(parts):05d}.parquet"))
    if not parts:
        raise FileNotFoundError(f"{shard_dir} has no finished shard yet")
    return pa.concat_tables(parts), total


def joined(members: dict[str, Path]) -> tuple[pa.Table, int]:
    """The members' scores of the rows every one has finished, cut to whole queries: the
    first member's columns with ``score`` as ``score_<member>``, one such column per member."""
    tables = {m: finished_rows(p) for m, p in members.items()}
    total = max(t for _, t in tables.values())  # the whole pair file's rows
    n = min(t.num_rows for t, _ in tables.values())
    first = next(iter(tables.values()))[0]
    queries = first.column("query").to_pylist()
    if n < total:  # the last query may go on beyond the finished rows
        while n > 0 and n < len(queries) and queries[n] == queries[n - 1]:
            n -= 1
    out = None
    for m, (t, _) in tables.items():
        t = t.slice(0, n)
        if out is None:
            out = t.rename_columns([f"score_{m}" if c == "score" else c for c in t.column_names])
            keys = out.select(["query", "product_id"])
        else:
            if not t.select(["query", "product_id"]).equals(keys):
                raise ValueError(f"member {m} scored other pairs than the first member")
            out = out.append_column(f"score_{m}", t.column("score"))
    return out, total


def main() -> None:
    from reranker.training.ensemble import Ensemble

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--member", action="append", required=True, help="NAME=LABEL_OUTPUT.parquet")
    ap.add_argument("--ensemble", required=True, type=Path)
    ap.add_argument("--rows", type=int, default=60_000)
    args = ap.parse_args()
    members = {}
    for v in args.member:
        name, _, path = v.partition("=")
        members[name] = Path(path)
    try:
        ens = Ensemble.load(args.ensemble)
        table, total = joined(members)
    except (OSError, ValueError, KeyError) as exc:  # one line, not a traceback
        raise SystemExit(f"shards: {exc}") from None
    logits = {m: table.column(f"score_{m}").to_numpy() for m in ens.members}
    table = table.append_column("score", pa.array(ens.combine(logits), pa.float32()))
    paths = write_shards(table, args.out_dir, args.name, args.rows)
    dist = {"rows": table.num_rows, "of_rows": total, "complete": table.num_rows == total}
    dist |= distribution(table)
    (args.out_dir / f"{args.name}-distribution.json").write_text(json.dumps(dist, indent=2))
    print(
        f"{table.num_rows} of {total} rows in {len(paths)} shard(s) under {args.out_dir}"
        + ("" if table.num_rows == total else " (labelling still in progress)")
    )


if __name__ == "__main__":
    main()
