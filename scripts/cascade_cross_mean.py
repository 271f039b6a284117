"""The default cascade with a second stage that averages two cross-encoder seeds (issue 15,
thirteenth session): does the two seeds' blend gain on judged pairs survive as a real cascade?

    python scripts/cascade_cross_mean.py --cascade CASCADE_DIR --other CROSS_DIR \\
        --judged train_holdout.parquet --index-dir INDEX [--per-query OUT.parquet] [--e2e]

``CASCADE_DIR``: a cascade directory (`reranker cascade LATE CROSS --second-k K --first-weight
0.25`); its second stage is replaced, for this evaluation only, by the mean of its raw score and
``CROSS_DIR``'s on the same rescored products (both read the cascade's product text, the title
for the shipped default). The probability is the cascade's second stage's activation of the mean
(it does not enter the metrics). Prints the evaluation protocol's figures as JSON; the per-query
file compares with the shipped default by `python -m reranker.training.paired`.

Not a shipped feature: the result (REPORT, thirteenth session) did not justify a second
cross-encoder per query, so the cascade still takes one second stage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import reranker.models as models
from reranker.cascade import NO_SPINNING, CascadeConfig, CascadeReranker
from reranker.crossencoder import Scores
from reranker.errors import RerankerError
from reranker.index import BM25Index
from reranker.training.evaluate import evaluate_system, load_judged, write_per_query


class MeanOfTwo:
    """Two cross-encoders' mean raw score on the same texts; what a cascade asks of its second
    stage (``score``, ``_activate``, ``config``)."""

    def __init__(self, a, b) -> None:
        if tuple(a.config.fields) != tuple(b.config.fields):
            raise SystemExit(f"the two read different fields: {a.config.fields}, {b.config.fields}")
        self.a, self.b, self.config = a, b, a.config

    def score(self, query: str, texts) -> Scores:
        raw = (self.a.score(query, texts).raw + self.b.score(query, texts).raw) / 2
        return Scores(raw, self.a._activate(raw))

    def _activate(self, raw):
        return self.a._activate(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cascade", required=True, type=Path)
    ap.add_argument("--other", required=True, type=Path, help="the second cross-encoder")
    ap.add_argument("--judged", required=True, type=Path)
    ap.add_argument("--index-dir", required=True, type=Path)
    ap.add_argument("--per-query", type=Path)
    ap.add_argument("--e2e", action="store_true")
    args = ap.parse_args()

    opened = models.open_model

    def with_mean(path, **kwargs):
        model = opened(path, **kwargs)
        if isinstance(model, CascadeReranker):
            model.second = MeanOfTwo(model.second, opened(args.other, session_config=NO_SPINNING))
        return model

    models.open_model = with_mean  # evaluate_system opens the model by this name
    rows: dict = {}
    try:
        cfg = CascadeConfig.read(args.cascade)
        m = evaluate_system(
            load_judged(args.judged),
            BM25Index.load(args.index_dir),
            model_dir=str(args.cascade),
            e2e=args.e2e,
            per_query=rows,
        )
        if args.per_query:
            write_per_query(args.per_query, rows)
    except (RerankerError, OSError) as exc:
        raise SystemExit(f"cascade_cross_mean: {exc}") from None
    out = {
        "system": f"{args.cascade} with its second stage averaged with {args.other}",
        "second_k": cfg.second_k,
        "first_weight": cfg.first_weight,
        "judged": str(args.judged),
        **m.to_dict(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
