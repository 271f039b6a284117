"""The default's blend over every pair of student seeds, reading title + attributes or the title
alone (issue 15, eighth session): does reading the title alone help the recipe, or one pair?

    python scripts/fields_seeds.py --late s13=DIR s14=DIR s15=DIR --cross s13=DIR s14=DIR \\
        --held-out train_holdout.parquet --dev dev.parquet --catalog products.parquet \\
        --cache scores.parquet --output training/results/students/fields_seeds.json

Scores every judged pair of both files with every student reading each field set once (kept in
``--cache``, so a rerun only reads it; ``--field-sets title`` reads the title alone only, e.g. for
students trained on it), then for each (late, cross) pair and field set the blend
``cross raw + w * late raw`` (``--weight``, default 0.5: the weight shipped before this
study) with the evaluation protocol; the per-seed figures of each student alone; and, per field
set, the spread over the pairs of seeds and their mean at every weight of the blend's grid
(``--cross-mean`` pairs left out of both), and each cross-encoder's blends
averaged over the late seeds, at ``--weight`` and over the grid (to compare cross-encoder recipes;
``--cross-mean NAME=A+B[+C]`` adds the mean of several of them as one more). Held-out pairs are the
choosing set, dev is only reported. A later run reads the cache and scores only the students it
lacks; the cache is keyed by name (``late s13``) and field set, not by directory or judged file,
so a name given to another directory, or another --held-out / --dev, reads the old scores: use a
new name for a new student and a new cache for new judged files.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reranker.errors import RerankerError
from reranker.training.evaluate import evaluate, load_judged

FIELD_SETS = {"attributes": ("brand", "color", "material"), "title": ()}
WEIGHT = 0.5
GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # as reranker.training.blend's


def named(values: list[str]) -> dict[str, str]:
    return dict(v.split("=", 1) for v in values)


def score_all(models: dict[str, str], judged: dict, catalog: str, cache: Path, field_sets: dict):
    """{(model, fields, set): {query: raw array in judged order}}; what ``cache`` lacks is scored
    and added to it, so a rerun with one more model scores that model only."""
    have = set()
    if cache.is_file():
        t = pq.read_table(cache, columns=["model", "fields"]).to_pydict()
        have = set(zip(t["model"], t["fields"], strict=True))
    todo = [(m, f) for m in models for f in field_sets if (m, f) not in have]
    if todo:
        from reranker.models import open_model
        from reranker.training.data import catalog_texts
        from reranker.training.fields import score_judged

        texts = {f: catalog_texts(catalog, field_sets[f]) for f in {f for _, f in todo}}
        rows = {c: [] for c in ("model", "fields", "set", "query", "position", "raw")}
        for name in dict.fromkeys(m for m, _ in todo):  # each model opened once
            model = open_model(models[name])
            for f in (f for m, f in todo if m == name):
                for s, js in judged.items():
                    for q, raw in score_judged(model, js, texts[f]).items():
                        for i, r in enumerate(raw):
                            for c, v in zip(rows, (name, f, s, q, i, float(r)), strict=True):
                                rows[c].append(v)
                print(f"scored {name} ({f})", flush=True)
        new = pa.table(rows)
        if cache.is_file():
            new = pa.concat_tables([pq.read_table(cache), new])
        tmp = cache.with_name(cache.name + ".tmp")
        pq.write_table(new, tmp)
        tmp.replace(cache)
    t = pq.read_table(cache).to_pydict()
    out: dict = {}
    for m, f, s, q, i, r in zip(*(t[c] for c in t), strict=True):
        out.setdefault((m, f, s), {}).setdefault(q, {})[i] = r
    return {
        k: {q: np.array([v[i] for i in sorted(v)]) for q, v in d.items()} for k, d in out.items()
    }


def metrics(judged, scores) -> list[float]:
    m = evaluate(judged, lambda q, ids: scores[q], progress=False)
    return [round(m.pair_accuracy, 4), round(m.ndcg10, 4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--late", nargs="+", required=True, help="SEED=DIR of late students")
    ap.add_argument("--cross", nargs="+", required=True, help="SEED=DIR of cross-encoders")
    ap.add_argument("--held-out", required=True)
    ap.add_argument("--dev", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument(
        "--field-sets",
        nargs="+",
        choices=sorted(FIELD_SETS),
        default=list(FIELD_SETS),
        help="which product texts to read (default: both)",
    )
    ap.add_argument("--weight", type=float, default=WEIGHT, help="the pairs' blend weight")
    ap.add_argument(
        "--cross-mean",
        nargs="+",
        default=[],
        help="NAME=A+B[+C...]: a second stage whose raw score is the mean of those --cross seeds",
    )
    ap.add_argument("--grid", nargs="+", type=float, default=GRID, help="blend weights to sweep")
    args = ap.parse_args()
    field_sets = {f: FIELD_SETS[f] for f in args.field_sets}

    late, cross = named(args.late), named(args.cross)
    models = {f"late {k}": v for k, v in late.items()} | {f"cross {k}": v for k, v in cross.items()}
    sets = {"held_out": args.held_out, "dev": args.dev}
    try:
        judged = {s: load_judged(p) for s, p in sets.items()}
        scores = score_all(models, judged, args.catalog, args.cache, field_sets)
    except RerankerError as exc:
        raise SystemExit(f"fields_seeds: {exc}") from None
    seeds = list(cross)  # the spread and the grid are the recipe's: the seeds, not their means
    for name, parts in named(args.cross_mean).items():
        members = [f"cross {x}" for x in parts.split("+")]
        if len(members) < 2 or any(m not in models for m in members):
            ap.error(f"--cross-mean {name}={parts}: two or more --cross names joined by +")
        for f in field_sets:
            for s in sets:
                each = [scores[m, f, s] for m in members]
                scores[f"cross {name}", f, s] = {
                    q: sum(e[q] for e in each) / len(each) for q in each[0]
                }
        cross[name] = f"mean of {', '.join(members)}"
        models[f"cross {name}"] = cross[name]

    alone = {
        m: {f: {s: metrics(judged[s], scores[m, f, s]) for s in sets} for f in field_sets}
        for m in models
    }
    pairs = []
    for a in late:
        for b in cross:
            row = {"first": f"late {a}", "second": f"cross {b}"}
            for f in field_sets:
                row[f] = {
                    s: metrics(
                        judged[s],
                        {
                            q: c + args.weight * scores[f"late {a}", f, s][q]
                            for q, c in scores[f"cross {b}", f, s].items()
                        },
                    )
                    for s in sets
                }
            pairs.append(row)
    seed_pairs = [p for p in pairs if p["second"].removeprefix("cross ") in seeds]
    summary = {
        f: {
            s: {
                what: {
                    "mean": round(statistics.mean(v), 4),
                    "sd": round(statistics.stdev(v), 4) if len(v) > 1 else None,
                    "min": min(v),
                    "max": max(v),
                }
                for what, v in (
                    ("pair_accuracy", [p[f][s][0] for p in seed_pairs]),
                    ("ndcg10", [p[f][s][1] for p in seed_pairs]),
                )
            }
            for s in sets
        }
        for f in field_sets
    }

    def blend(f, s, a, b, w):
        c, late_raw = scores[f"cross {b}", f, s], scores[f"late {a}", f, s]
        return metrics(judged[s], {q: c[q] + w * late_raw[q] for q in c})

    def mean_pair_accuracy(f, s, seconds, w):
        return round(statistics.mean(blend(f, s, a, b, w)[0] for a in late for b in seconds), 4)

    grid = {
        f: {s: {str(w): mean_pair_accuracy(f, s, seeds, w) for w in args.grid} for s in sets}
        for f in field_sets
    }

    def by_late_mean(b, f, s):  # one cross-encoder's blends at --weight, mean over the late seeds
        rows = [p[f][s] for p in pairs if p["second"] == f"cross {b}"]
        return [round(statistics.mean(r[i] for r in rows), 4) for i in (0, 1)]

    by_second = {
        f"cross {b}": {
            f: {
                s: {
                    "at_weight": by_late_mean(b, f, s),
                    "pair_accuracy_by_weight": {
                        str(w): mean_pair_accuracy(f, s, [b], w) for w in args.grid
                    },
                }
                for s in sets
            }
            for f in field_sets
        }
        for b in cross
    }
    result = {
        "what": f"each student alone and the blend cross raw + {args.weight} * late raw of "
        "every pair of seeds (int8), reading title + brand, color, material (as trained) or the "
        "title alone: [pair accuracy, NDCG@10] on the held-out train slice and dev",
        "alone": alone,
        "pairs": pairs,
        "summary_blend": summary,
        "mean_over_first_seeds_by_second": by_second,
        "mean_pair_accuracy_by_weight": grid,
    }
    args.output.write_text(json.dumps(result, indent=1))
    for m, d in alone.items():
        print(m, {f: d[f] for f in field_sets})
    for p in pairs:
        print(p["first"], "+", p["second"], {f: p[f] for f in field_sets})
    print(json.dumps(summary, indent=1))
    print("each cross-encoder's blends, mean over the late seeds:", json.dumps(by_second))
    print("mean pair accuracy over the pairs, by weight:", json.dumps(grid))


if __name__ == "__main__":
    main()
