"""Probabilities that mean something: Platt scaling of a runtime model's raw score.

``probability = sigmoid(scale * raw + bias)``, with ``scale`` and ``bias`` fitted by binary
cross-entropy against the soft targets ``(relevance - 1) / 2`` of judged pairs the model was not
trained on (never dev), and stored in the model's ``reranker.json`` (``calibration``; one fitted
on a variant other than the default, under ``calibrations``, by variant). The raw
score and every ranking stay as they were; only the probability column changes, so that a
threshold on it means the same for every query. Reported with the expected calibration error
(ECE: 10 equal-width bins of the probability, the gap between its mean and the mean soft target
in each, weighted by the bin's share) and a reliability plot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reranker.crossencoder import CONFIG_FILE
from reranker.errors import DataError
from reranker.training.data import catalog_texts, read_pairs, soft_targets, texts_for


def fit_platt(raw: np.ndarray, target: np.ndarray, iters: int = 200) -> tuple[float, float]:
    """``scale, bias`` minimising BCE(sigmoid(scale * raw + bias), target): Newton's method on
    the standardised score, from the constant fit (scale 0), halving a step that does not lower
    the loss, so that raw scores far from 0 or of a large spread cannot make it diverge."""
    s = np.asarray(raw, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    mu, sd = float(s.mean()), float(s.std()) or 1.0
    z = (s - mu) / sd
    x = np.stack([z, np.ones_like(z)], axis=1)
    mean_t = float(np.clip(t.mean(), 1e-6, 1 - 1e-6))
    w = np.array([0.0, np.log(mean_t / (1 - mean_t))])

    def loss(w):
        logit = np.clip(x @ w, -30, 30)
        return float(np.mean(np.logaddexp(0, logit) - t * logit))

    current = loss(w)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - t) / len(z)
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(z) + 1e-9 * np.eye(2)
        delta = np.linalg.solve(hess, grad)
        step = 1.0
        while step > 1e-6 and loss(w - step * delta) > current:
            step /= 2
        if step <= 1e-6:
            break
        w = w - step * delta
        current = loss(w)
        if np.abs(step * delta).max() < 1e-10:
            break
    return float(w[0] / sd), float(w[1] - w[0] * mu / sd)


def ece(probability: np.ndarray, target: np.ndarray, bins: int = 10) -> float:
    p = np.asarray(probability, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(p[m].mean() - t[m].mean())
    return float(total)


def reliability(probability: np.ndarray, target: np.ndarray, bins: int = 10) -> list[dict]:
    p = np.asarray(probability, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    return [
        {
            "bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
            "pairs": int((which == b).sum()),
            "mean_probability": float(p[which == b].mean()),
            "mean_target": float(t[which == b].mean()),
        }
        for b in range(bins)
        if (which == b).any()
    ]


def judged_scores(
    model,
    judged: str | Path,
    catalog: str | Path,
    exclude=(),
    *,
    max_pairs: int | None = None,
    seed: int = 13,
    chunk: int = 512,
):
    """The model's raw scores and the soft targets of a judged file's pairs, leaving out the
    (query, product_id) pairs of every ``exclude`` file (what the model was trained on); with
    ``max_pairs``, a seeded sample of whole queries of about that many pairs. Scored ``chunk``
    pairs at a time (a late student holds every product's states while it scores)."""
    t = read_pairs(judged, ("query", "product_id", "relevance"))
    skip = set()
    for f in exclude:
        e = read_pairs(f, ("query", "product_id"))
        skip |= set(
            zip(
                e.column("query").to_pylist(),
                map(str, e.column("product_id").to_pylist()),
                strict=True,
            )
        )
    rows = [
        i
        for i, (q, p) in enumerate(
            zip(
                t.column("query").to_pylist(),
                map(str, t.column("product_id").to_pylist()),
                strict=True,
            )
        )
        if (q, p) not in skip
    ]
    if not rows:
        raise DataError(f"no pair of {judged} is left once the excluded pairs are removed")
    all_queries = t.column("query").to_pylist()
    if max_pairs is not None and len(rows) > max_pairs:
        by_query: dict[str, list[int]] = {}
        for i in rows:
            by_query.setdefault(all_queries[i], []).append(i)
        picked: list[int] = []
        for q in np.random.default_rng(seed).permutation(sorted(by_query)):
            if len(picked) >= max_pairs:
                break
            picked += by_query[q]
        rows = sorted(picked)
    queries = [all_queries[i] for i in rows]
    pids = [str(t.column("product_id")[i].as_py()) for i in rows]
    texts = texts_for(pids, catalog_texts(catalog, model.config.fields), judged)
    raw = np.concatenate(
        [
            model.score_pairs(queries[i : i + chunk], texts[i : i + chunk]).raw
            for i in range(0, len(queries), chunk)
        ]
    )
    rel = np.asarray([t.column("relevance")[i].as_py() for i in rows], dtype=np.float64)
    return raw, soft_targets(rel)


def calibrate(
    model_dir: str | Path,
    judged: str | Path,
    catalog: str | Path,
    *,
    exclude: Sequence[str | Path] = (),
    variant: str | None = None,
    max_pairs: int | None = 10_000,
) -> dict:
    """Fit and store the model's calibration; returns what was written (with ECE before and
    after on the fitting pairs)."""
    from reranker.models import open_model

    model_dir = Path(model_dir)
    model = open_model(model_dir, variant=variant)
    if hasattr(model, "second_k"):
        # a cascade: the fit is that of the rescored products' score (the rest keep the first
        # stage's probability), so every judged pair is rescored here
        model.second_k = 1 << 30
    raw, target = judged_scores(model, judged, catalog, exclude, max_pairs=max_pairs)
    scale, bias = fit_platt(raw, target)
    plain = 1.0 / (1.0 + np.exp(-raw.astype(np.float64)))
    fitted = 1.0 / (1.0 + np.exp(-(scale * raw + bias)))
    calibration = {
        "method": "platt",
        "scale": scale,
        "bias": bias,
        "fitted_on": f"{Path(judged).name}, {len(raw)} judged pairs not in training",
        "variant": model.variant if hasattr(model, "variant") else variant,
        "ece_before": ece(plain, target),
        "ece_after": ece(fitted, target),
    }
    path = model_dir / CONFIG_FILE
    config = json.loads(path.read_text())
    store_calibration(config, calibration, cascade=hasattr(model, "second_k"))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return calibration


def store_calibration(config: dict, calibration: dict, cascade: bool = False) -> None:
    """Put ``calibration`` in a model's config: as ``calibration`` when fitted on its default
    variant (a calibration it held for another variant moves to ``calibrations``) or when it
    has none yet (it then applies to every variant), else in ``calibrations`` under its
    variant. A cascade has one (its blend's)."""
    variant = calibration.get("variant")
    old = config.get("calibration") or {}
    old_variant = None if cascade else old.get("variant")
    if old_variant not in (None, variant) and variant != config.get("default_variant"):
        config.setdefault("calibrations", {})[variant] = calibration  # beside the default's
        return
    if old_variant not in (None, variant):  # the default's replaces another variant's
        config.setdefault("calibrations", {}).setdefault(old_variant, old)
    config["calibration"] = calibration
    config.get("calibrations", {}).pop(variant, None)
    if "calibrations" in config and not config["calibrations"]:
        del config["calibrations"]


def plot_reliability(curves: dict[str, list[dict]], output: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for name, rows in curves.items():
        ax.plot(
            [r["mean_probability"] for r in rows],
            [r["mean_target"] for r in rows],
            marker="o",
            label=name,
        )
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("judged (relevance - 1) / 2 (bin mean)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return Path(output)
