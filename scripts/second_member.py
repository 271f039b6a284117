"""Would a second mpnet member make a better teacher? Its scores against the first member's and
their plain mean (equal weights in logit space, nothing fitted, so the held-out slice stays out
of sample for both), on train's held-out slice and, for the new member alone, on dev.

    python scripts/second_member.py --held-out train_holdout.parquet --dev dev.parquet \\
        --first training/results/teacher/scores_train.parquet \\
        --second-held-out S14_holdout.parquet \\
        --second-dev S14_dev.parquet --output training/results/teacher/second_member.json

    python scripts/second_member.py ... --name "mpnet, title alone" \\
        --second-held-out TITLE_holdout.parquet --second-dev TITLE_dev.parquet \\
        --output training/results/teacher/title_member.json

``--first``: the committed teacher scores of train's judged pairs (``score_mpnet`` and the
ensemble's ``score``); ``--second-*``: `reranker label` files of the new member; ``--name``: how
the output names it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from reranker.errors import RerankerError
from reranker.training.blend import bootstrap, paired_gain
from reranker.training.evaluate import evaluate, load_judged, score_lookup


def metrics(judged, scorer) -> dict:
    m = evaluate(judged, lambda q, ids: np.array([scorer(q, p) for p in ids]))
    return {"pair_accuracy": round(m.pair_accuracy, 4), "ndcg10": round(m.ndcg10, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("held-out", "dev", "first", "second-held-out", "second-dev", "output"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--name", default="mpnet seed 14 (second member)", help="the new member's")
    args = ap.parse_args()
    new = args.name
    try:
        held, dev = load_judged(args.held_out), load_judged(args.dev)
        first = {c: score_lookup(args.first, c) for c in ("score_mpnet", "score")}
        second_held, second_dev = (
            score_lookup(args.second_held_out, "score"),
            score_lookup(args.second_dev, "score"),
        )
    except (RerankerError, OSError) as exc:
        raise SystemExit(f"second_member: {exc}") from None
    mp, s2 = first["score_mpnet"], second_held
    result = {
        "held_out": {
            "mpnet (first member)": metrics(held, lambda q, p: mp[(q, p)]),
            "teacher ensemble (MiniLM 0.05, mpnet 0.95; weights fitted on this slice)": metrics(
                held, lambda q, p: first["score"][(q, p)]
            ),
            new: metrics(held, lambda q, p: s2[(q, p)]),
            "mean of the two mpnet members (equal weights, not fitted)": metrics(
                held, lambda q, p: 0.5 * mp[(q, p)] + 0.5 * s2[(q, p)]
            ),
        },
        "dev": {new: metrics(dev, lambda q, p: second_dev[(q, p)])},
    }
    queries = held.evaluable().items()  # per held-out query: new member / mean minus the first
    one = {q: np.array([mp[(q, p)] for p in ids]) for q, (ids, _) in queries}
    alone = {q: np.array([s2[(q, p)] for p in ids]) for q, (ids, _) in queries}
    two = {q: 0.5 * one[q] + 0.5 * alone[q] for q in one}
    result["held_out_gain_of_the_new_member_over_the_first"] = bootstrap(
        paired_gain(held, alone, one)
    )
    result["held_out_gain_of_the_mean_over_the_first_member"] = bootstrap(
        paired_gain(held, two, one)
    )
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
