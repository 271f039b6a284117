"""Which product text a trained model ranks best with at inference: its own fields or fewer.

    python -m reranker.training.fields reranker/models/default --try "" --try brand \\
        --choose-on train_holdout.parquet --report-on dev.parquet --catalog products.parquet \\
        --output training/results/students/fields_default.json

A model reads the title and the attributes it was trained with (``fields`` in its config). This
scores every judged pair of both files with the model reading its own fields and each ``--try``
set (comma-separated; ``""``: the title alone), with the evaluation protocol. The chosen set is the
one with the best pair accuracy on ``--choose-on`` (judged pairs held out of the model's training,
never dev); ``--report-on`` (dev) is only reported. For the chosen set against the model's own, the
mean per-query gain in pair accuracy with a 95% bootstrap interval over queries (as
:mod:`reranker.training.blend` reports a weight's), per set and pooled.

    python -m reranker.training.fields reranker/models/cross --set ""

makes an exported or shipped student read the chosen fields from then on: its config's ``fields``
(what indexing, serving and evaluation give it) is replaced, the fields it was trained with are
kept in ``metadata.trained_fields``, and a fitted probability calibration is dropped (its scores
moved; refit it with ``reranker calibrate``, and a cascade's over this student too).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from reranker.training.blend import gain_summary, paired_gain, print_gains, print_rows
from reranker.training.evaluate import evaluate, load_judged


def parse_fields(text: str) -> tuple[str, ...]:
    return tuple(f.strip() for f in text.split(",") if f.strip())


def label(fields: tuple[str, ...]) -> str:
    return "title" + "".join(f"+{f}" for f in fields)


def score_judged(model, judged, texts: dict[str, str]) -> dict[str, np.ndarray]:
    """Raw scores of every evaluable query's judged products: {query: array}."""
    from tqdm.auto import tqdm

    items = judged.evaluable().items()
    return {
        q: model.score(q, [texts[p] for p in ids]).raw
        for q, (ids, _) in tqdm(items, desc="scoring", unit="query", leave=False)
    }


def set_fields(model_dir: str | Path, fields: tuple[str, ...]) -> tuple[dict, bool]:
    """Make a student read ``fields`` after the title (see above); returns its new config and
    whether a calibration was dropped."""
    from reranker.crossencoder import CONFIG_FILE, ModelConfig

    model_dir = Path(model_dir)
    ModelConfig.read(model_dir)  # a student's directory (not a cascade's), checked
    path = model_dir / CONFIG_FILE
    cfg = json.loads(path.read_text())
    meta = cfg.setdefault("metadata", {})
    meta.setdefault("trained_fields", list(cfg.get("fields", [])))
    cfg["fields"] = list(fields)
    dropped = bool(cfg.get("calibration") or cfg.get("calibrations"))
    if cfg.get("calibration"):
        meta["dropped_calibration"] = cfg["calibration"]
        cfg["calibration"] = {}
    cfg.pop("calibrations", None)  # the other variants' too: fitted on the old text
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    ModelConfig.read(model_dir)
    return cfg, dropped


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument(
        "--try",
        dest="tries",
        action="append",
        help='fields to read instead, comma-separated ("" = the title alone); repeatable',
    )
    ap.add_argument("--choose-on")
    ap.add_argument("--report-on")
    ap.add_argument("--catalog")
    ap.add_argument("--output")
    ap.add_argument("--set", dest="set_to", help="make the model read these fields from now on")
    args = ap.parse_args(argv)
    if args.set_to is not None:
        from reranker.errors import ModelError

        try:
            cfg, dropped = set_fields(args.model, parse_fields(args.set_to))
        except ModelError as exc:
            ap.error(f"{exc} (--set changes a student; a cascade reads its students' fields)")
        trained = label(tuple(cfg["metadata"]["trained_fields"]))
        print(f"{args.model} now reads {label(tuple(cfg['fields']))} (trained on {trained})")
        if dropped:
            print("its calibration was dropped: refit it (`reranker calibrate`), and any cascade's")
        return
    missing = [
        o for o in ("tries", "choose_on", "report_on", "catalog", "output") if not getattr(args, o)
    ]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-").replace("tries", "try") for m in missing)
        ap.error(f"a comparison needs {flags} (or --set FIELDS)")

    from reranker.catalog import read_catalog
    from reranker.models import open_model

    model = open_model(args.model)
    own = tuple(model.config.fields)
    candidates = [own] + [f for f in map(parse_fields, args.tries) if f != own]
    candidates = list(dict.fromkeys(candidates))
    catalog = read_catalog(args.catalog)
    unknown = sorted({f for c in candidates for f in c} - set(catalog.attribute_fields))
    if unknown:
        ap.error(
            f"{', '.join(unknown)} not among the attributes of {args.catalog} "
            f"({', '.join(catalog.attribute_fields) or 'none'})"
        )
    rows, scores, judged = [], {}, {}
    for which, path in (("choose", args.choose_on), ("report", args.report_on)):
        judged[which] = load_judged(path)
        for fields in candidates:
            texts = {p.id: p.text(fields) for p in catalog.products}
            cache = score_judged(model, judged[which], texts)
            scores[which, fields] = cache
            m = evaluate(judged[which], lambda q, ids, c=cache: c[q], progress=False)
            rows.append(
                {"set": which, "file": Path(path).name, "fields": label(fields), **m.to_dict()}
            )
    by_label = {label(f): f for f in candidates}
    choose = [r for r in rows if r["set"] == "choose"]
    best = by_label[max(choose, key=lambda r: r["pair_accuracy"])["fields"]]
    gain = gain_summary(
        {w: paired_gain(judged[w], scores[w, best], scores[w, own]) for w in ("choose", "report")}
    )
    result = {
        "model": args.model,
        "own_fields": label(own),
        "chosen": label(best),
        "rows": rows,
        "gain_over_own": gain,
    }
    Path(args.output).write_text(json.dumps(result, indent=1))
    print_rows(rows, "fields", 28)
    print(f"chosen on {Path(args.choose_on).name}: {label(best)} (own: {label(own)})")
    print_gains(gain, "own fields")


if __name__ == "__main__":
    main()
