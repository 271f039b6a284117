"""The training commands end to end on tiny local models: train-teacher → augment → label
(killed and resumed) → distill (both losses) → export → eval → `reranker search` uses it."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from reranker.cli import main
from reranker.errors import DataError, ModelError, RerankerError
from reranker.index import BM25Index
from reranker.training.augment import attribute_query, augment, synthetic_query
from reranker.training.label import label_pairs
from reranker.training.requantize import SEVEN_BIT, integer_weights

TRAIN = [
    ("cordless drill", "p001", 3.0),
    ("cordless drill", "p029", 2.33),
    ("cordless drill", "p007", 1.0),
    ("cordless drill", "p006", 2.0),
    ("garden hose", "p007", 3.0),
    ("garden hose", "p008", 2.67),
    ("garden hose", "p013", 1.0),
    ("garden hose", "p025", 2.0),
    ("toilet seat", "p013", 3.0),
    ("toilet seat", "p014", 2.67),
    ("toilet seat", "p016", 1.0),
    ("led bulb", "p010", 3.0),
    ("led bulb", "p011", 2.67),
    ("led bulb", "p028", 1.67),
]
DEV = [
    ("hammer drill", "p002", 3.0),
    ("hammer drill", "p005", 2.0),
    ("hammer drill", "p009", 1.0),
    ("hose nozzle", "p025", 3.0),
    ("hose nozzle", "p026", 2.67),
    ("hose nozzle", "p018", 1.0),
]


@pytest.fixture(scope="module")
def splits(tmp_path_factory, write_judged):
    d = tmp_path_factory.mktemp("splits")
    return write_judged(d / "train.parquet", TRAIN), write_judged(d / "dev.parquet", DEV)


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], env={"RERANKER_MODEL": ""})
    assert result.exit_code == 0, result.output
    return result.output


def test_augment_is_seeded_deduplicated_and_never_uses_excluded_queries(
    built_index, splits, tmp_path
):
    train, dev = splits
    index = BM25Index.load(built_index)
    a = augment(
        index,
        train,
        tmp_path / "a.parquet",
        exclude=[dev],
        per_query=5,
        synthetic_queries=10,
        seed=3,
        progress=False,
    )
    b = augment(
        index,
        train,
        tmp_path / "b.parquet",
        exclude=[dev],
        per_query=5,
        synthetic_queries=10,
        seed=3,
        progress=False,
    )
    ta, tb = pq.read_table(a.output), pq.read_table(b.output)
    assert ta.equals(tb)
    rows = ta.to_pylist()
    assert {"bm25", "synthetic"} == {r["source"] for r in rows}
    pairs = [(r["query"], r["product_id"]) for r in rows]
    assert len(pairs) == len(set(pairs))
    assert not {(q, p) for q, p, _ in TRAIN} & set(pairs)  # judged pairs are not "unlabelled"
    assert not {q for q, _, _ in DEV} & {r["query"] for r in rows}
    assert all(r["origin_product_id"] for r in rows if r["source"] == "synthetic")
    assert a.synthetic_queries == 10 and a.pairs == ta.num_rows
    with pytest.raises(RerankerError, match="exists; pass --overwrite"):
        augment(index, train, a.output, progress=False)
    with pytest.raises(RerankerError, match="also in an excluded file"):
        augment(index, train, tmp_path / "c.parquet", exclude=[train], progress=False)


def test_augment_draws_from_deep_ranks_and_makes_attribute_queries(built_index, splits, tmp_path):
    train, dev = splits
    index = BM25Index.load(built_index)
    r = augment(
        index,
        train,
        tmp_path / "deep.parquet",
        exclude=[dev],
        per_query=4,
        depth=20,
        head=2,
        synthetic_queries=12,
        attribute_share=1.0,
        progress=False,
    )
    rows = pq.read_table(r.output).to_pylist()
    judged = {(q, p) for q, p, _ in TRAIN}
    for q in {q for q, _, _ in TRAIN}:
        ranks = sorted(x["bm25_rank"] for x in rows if x["query"] == q)
        fresh = [c for c in index.retrieve(q, 20) if (q, c.product.id) not in judged]
        assert len(ranks) == min(4, len(fresh)) and all(r <= 20 for r in ranks)
        assert ranks[:2] == [c.rank for c in fresh[:2]]  # the head is always kept
    assert r.attribute_queries > 0
    with pytest.raises(RerankerError, match="head <= per-query <= depth"):
        augment(index, train, tmp_path / "x.parquet", per_query=30, depth=20, progress=False)


def test_attribute_queries_pair_a_value_with_title_words():
    from reranker.catalog import Product

    rng = np.random.default_rng(1)
    p = Product("1", "Elongated Closed Front Toilet Seat in White", {"color": "White / Bone"})
    for _ in range(5):
        q = attribute_query(p, rng).split()
        assert q[0] == "white" and 2 <= len(q) <= 3 and "white" not in q[1:]
    assert attribute_query(Product("2", "Toilet Seat", {}), rng) is None


def test_synthetic_queries_are_title_spans():
    rng = np.random.default_rng(0)
    q = synthetic_query("DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit", rng)
    words = q.split()
    assert 1 <= len(words) <= 3
    assert q in "dewalt max lithium ion cordless drill driver"
    assert synthetic_query("12 in. 3/4", rng) is None


def test_label_resumes_after_kill_without_losing_or_duplicating(tiny_model, catalog_csv, tmp_path):
    n = 6000
    pids = [f"p{i % 30 + 1:03d}" for i in range(n)]
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table(
            {"query": [f"drill {i}" for i in range(n)], "product_id": pids, "row": list(range(n))}
        ),
        pairs,
    )
    out = tmp_path / "scores.parquet"
    shards = tmp_path / "scores.parquet.shards"
    code = textwrap.dedent(f"""
        from reranker.training.label import label_pairs
        label_pairs({str(pairs)!r}, {str(tiny_model)!r}, {str(catalog_csv)!r}, {str(out)!r},
                    shard_size=100, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("part-*.parquet"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(shards.glob("part-*.parquet")))
    assert done_before >= 3, "the run ended before it could be killed mid-way"
    assert done_before < 60 and not out.exists(), "the run finished before the kill"

    report = label_pairs(pairs, tiny_model, catalog_csv, out, shard_size=100, progress=False)
    assert report.shards_done_before == done_before
    got = pq.read_table(out)
    assert got.num_rows == n and got.column("row").to_pylist() == list(range(n))
    assert not shards.exists()

    fresh = label_pairs(
        pairs, tiny_model, catalog_csv, tmp_path / "fresh.parquet", shard_size=100, progress=False
    )
    np.testing.assert_allclose(
        pq.read_table(fresh.output).column("score").to_numpy(),
        got.column("score").to_numpy(),
        atol=0.05,
    )  # int8: batch-dependent


def test_label_validates_inputs(tiny_model, catalog_csv, tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"query": ["x"]}), bad)
    with pytest.raises(DataError, match="lacks column.*product_id"):
        label_pairs(bad, tiny_model, catalog_csv, tmp_path / "o.parquet", progress=False)
    unknown = tmp_path / "unknown.parquet"
    pq.write_table(pa.table({"query": ["x"], "product_id": ["nope"]}), unknown)
    with pytest.raises(DataError, match="not in the catalog"):
        label_pairs(unknown, tiny_model, catalog_csv, tmp_path / "o.parquet", progress=False)
    with pytest.raises(RerankerError, match="not a Hugging Face model directory"):
        label_pairs(unknown, tmp_path, catalog_csv, tmp_path / "o.parquet", progress=False)


def test_tiny_end_to_end_chain(tmp_path, splits, catalog_csv, built_index, tiny_hf_model):
    train, dev = splits
    teacher = tmp_path / "teacher"
    cli(
        "train-teacher",
        "--model",
        tiny_hf_model,
        "--train",
        train,
        "--catalog",
        catalog_csv,
        "--output",
        teacher,
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--epochs",
        "2",
        "--max-length",
        "32",
    )
    aug = tmp_path / "aug.parquet"
    cli(
        "augment",
        "--index-dir",
        built_index,
        "--train",
        train,
        "--exclude",
        dev,
        "--output",
        aug,
        "--per-query",
        "6",
        "--depth",
        "12",
        "--head",
        "3",
        "--synthetic-queries",
        "8",
        "--attribute-share",
        "0.5",
    )
    cli(
        "label",
        train,
        "--teacher",
        teacher,
        "--catalog",
        catalog_csv,
        "--output",
        tmp_path / "train_scores.parquet",
        "--shard-size",
        "5",
    )
    out = cli(
        "label",
        aug,
        "--teacher",
        teacher,
        "--catalog",
        catalog_csv,
        "--output",
        tmp_path / "aug_scores.parquet",
        "--shard-size",
        "16",
    )
    assert "labelled" in out
    n_aug = pq.read_table(tmp_path / "aug_scores.parquet").num_rows
    for loss in ("listwise", "triples", "listwise-kl", "labels-bce"):
        student = tmp_path / f"student-{loss}"
        data = (  # the control reads the judged labels directly, no teacher scores
            ["--labelled", train, "--precision", "bf16"]
            if loss == "labels-bce"
            else [
                "--labelled",
                tmp_path / "train_scores.parquet",
                "--augmented",
                tmp_path / "aug_scores.parquet",
                "--augment-size",
                str(n_aug // 2),
            ]
        )
        cli(
            "distill",
            *data,
            "--catalog",
            catalog_csv,
            "--student",
            tiny_hf_model,
            "--layers",
            "1",
            "--loss",
            loss,
            "--output",
            student,
            "--max-length",
            "32",
            "--batch-pairs",
            "8",
        )
        meta = json.loads((student / "distill_args.json").read_text())
        assert meta["layers"] == 1 and meta["pairs"] >= len(TRAIN) and meta["loss"] == loss
        if loss == "labels-bce":
            assert meta["precision_used"] == "bf16" and meta["pairs"] == len(TRAIN)
        cli("export", student, "--output", tmp_path / f"onnx-{loss}", "--max-length", "32")
        # 7-bit weights (reduce_range): exact on CPUs without VNNI too
        weights = integer_weights(tmp_path / f"onnx-{loss}" / "model.int8.onnx").values()
        assert weights and max(np.abs(w.astype(int)).max() for w in weights) <= SEVEN_BIT
    model_dir = tmp_path / "onnx-listwise"
    cfg = json.loads((model_dir / "reranker.json").read_text())
    assert cfg["fields"] == ["brand", "color", "material"]
    assert cfg["metadata"]["parity"]["fp32_vs_torch_max_abs_diff"] < 1e-4

    per_query = tmp_path / "per_query.parquet"
    out = cli(
        "eval", "--judged", dev, "--index-dir", built_index, "--model", model_dir,
        "--e2e", "--json", "--per-query", per_query,
    )  # fmt: skip
    metrics = json.loads(out[out.index("{") :])
    assert 0 <= metrics["ndcg10"] <= 1 and metrics["queries"] == 2
    assert metrics["rmse"] is not None and metrics["e2e_ndcg10"] is not None
    rows = pq.read_table(per_query).to_pylist()
    assert len(rows) == 2
    assert np.mean([r["e2e_ndcg10"] for r in rows]) == pytest.approx(metrics["e2e_ndcg10"])
    bad = CliRunner().invoke(
        main, ["eval", "--judged", str(dev), "--index-dir", str(built_index), "--model",
               str(model_dir), "--per-query", str(tmp_path / "missing" / "q.parquet")],
    )  # fmt: skip
    assert bad.exit_code == 2 and "no directory" in bad.output and "Traceback" not in bad.output
    out = cli("eval", "--judged", dev, "--index-dir", built_index, "--hf-model", teacher)
    assert "NDCG@10" in out

    # a second teacher member in bf16 autocast, and the two combined in logit space
    teacher2 = tmp_path / "teacher2"
    cli(
        "train-teacher",
        "--model",
        tiny_hf_model,
        "--train",
        train,
        "--catalog",
        catalog_csv,
        "--output",
        teacher2,
        "--batch-size",
        "4",
        "--lr",
        "5e-4",
        "--seed",
        "7",
        "--max-length",
        "32",
        "--precision",
        "bf16",
    )
    assert json.loads((teacher2 / "teacher_args.json").read_text())["precision_used"] == "bf16"
    for name, t in (("a", teacher), ("b", teacher2)):
        for split, pairs in (("train", train), ("dev", dev)):
            cli(
                "label",
                pairs,
                "--teacher",
                t,
                "--catalog",
                catalog_csv,
                "--output",
                tmp_path / f"{name}_{split}.parquet",
                "--precision",
                "fp32" if name == "a" else "bf16-linear",  # b: bf16 in its linear layers only
            )
    ens = tmp_path / "ensemble.json"
    out = cli(
        "ensemble",
        "fit",
        "--member",
        f"a={tmp_path / 'a_train.parquet'}",
        "--member",
        f"b={tmp_path / 'b_train.parquet'}",
        "--holdout",
        train,  # in real use: judged pairs no member trained on
        "--step",
        "0.25",
        "--output",
        ens,
    )
    assert "weights: a" in out
    cfg = json.loads(ens.read_text())
    assert sum(cfg["weights"]) == pytest.approx(1.0) and cfg["holdout"]["pairs"] == len(TRAIN)
    cli(
        "ensemble",
        "apply",
        "--member",
        f"a={tmp_path / 'a_dev.parquet'}",
        "--member",
        f"b={tmp_path / 'b_dev.parquet'}",
        "--ensemble",
        ens,
        "--output",
        tmp_path / "ens_dev.parquet",
    )
    table = pq.read_table(tmp_path / "ens_dev.parquet")
    assert {"score_a", "score_b", "score"} <= set(table.column_names)
    a, b = table.column("score_a").to_numpy(), table.column("score_b").to_numpy()
    w = cfg["weights"]
    expected = cfg["scale"] * (w[0] * a + w[1] * b) + cfg["bias"]
    assert table.column("score").to_numpy() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    out = cli(
        "eval",
        "--judged",
        dev,
        "--index-dir",
        built_index,
        "--scores",
        tmp_path / "ens_dev.parquet",
    )
    assert "ens_dev.parquet:score" in out

    env = dict(os.environ, RERANKER_MODEL=str(model_dir))
    result = CliRunner().invoke(
        main, ["search", "cordless drill", "--index-dir", str(built_index)], env=env
    )
    assert result.exit_code == 0 and f"reranked by {model_dir.name}" in result.output


def test_calibrate_fits_the_probability_and_keeps_the_ranking(model_copy, splits, catalog_csv):
    from reranker import CrossEncoder

    train, dev = splits
    before = CrossEncoder(model_copy, variant="fp32").score("cordless drill", ["a drill", "a hose"])
    out = cli(
        "calibrate",
        model_copy,
        "--judged",
        train,
        "--catalog",
        catalog_csv,
        "--variant",
        "fp32",
        "--plot-judged",
        dev,
    )
    assert "calibration of" in out and "ECE" in out
    cfg = json.loads((model_copy / "reranker.json").read_text())["calibration"]
    assert cfg["method"] == "platt" and cfg["ece_after"] <= cfg["ece_before"] + 1e-9
    after = CrossEncoder(model_copy, variant="fp32").score("cordless drill", ["a drill", "a hose"])
    assert after.raw == pytest.approx(before.raw)  # rankings do not change
    z = cfg["scale"] * after.raw.astype(np.float64) + cfg["bias"]
    assert after.probability == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-5)


def test_each_variant_keeps_its_own_calibration(model_copy, splits, catalog_csv):
    """A calibration fitted on a variant other than the default is kept beside the default's
    (``calibrations``); each variant's probability uses its own."""
    from reranker import CrossEncoder

    train, _ = splits
    args = ["--judged", train, "--catalog", catalog_csv]
    assert json.loads((model_copy / "reranker.json").read_text())["default_variant"] == "int8"
    cli("calibrate", model_copy, *args, "--variant", "fp32")  # the first: the model's only one
    cli("calibrate", model_copy, *args)  # the default's moves the fp32 one aside
    cfg = json.loads((model_copy / "reranker.json").read_text())
    assert cfg["calibration"]["variant"] == "int8"
    assert set(cfg["calibrations"]) == {"fp32"}
    cli("calibrate", model_copy, *args, "--variant", "fp32")  # fitted again: replaced there
    cfg = json.loads((model_copy / "reranker.json").read_text())
    assert cfg["calibration"]["variant"] == "int8" and set(cfg["calibrations"]) == {"fp32"}
    for variant, cal in (("int8", cfg["calibration"]), ("fp32", cfg["calibrations"]["fp32"])):
        got = CrossEncoder(model_copy, variant=variant).score("cordless drill", ["a drill"])
        z = cal["scale"] * got.raw.astype(np.float64) + cal["bias"]
        assert got.probability == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-5)
    path = model_copy / "reranker.json"
    path.write_text(json.dumps(cfg | {"calibrations": {"fp32": {"scale": 1.0}}}))
    with pytest.raises(ModelError, match=r"calibrations\['fp32'\] needs numeric"):
        CrossEncoder(model_copy)


def test_calibrate_leaves_out_the_training_pairs(model_copy, splits, catalog_csv, tmp_path):
    train, _ = splits
    result = CliRunner().invoke(
        main,
        [
            "calibrate",
            str(model_copy),
            "--judged",
            str(train),
            "--catalog",
            str(catalog_csv),
            "--exclude",
            str(train),
        ],
    )
    assert result.exit_code == 1 and "no pair of" in result.output


def test_a_malformed_calibration_is_refused(model_copy):
    from reranker.errors import ModelError
    from reranker.models import open_model

    path = model_copy / "reranker.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps(cfg | {"calibration": {"scale": "x"}}))
    with pytest.raises(ModelError, match="calibration needs numeric"):
        open_model(model_copy)


def test_score_shards_keep_queries_whole_and_read_back_by_glob(tmp_path):
    from reranker.training.data import read_pairs
    from reranker.training.shards import distribution, write_shards

    rows = [(f"q{i // 3}", str(i), "bm25" if i % 2 else "synthetic", float(i)) for i in range(10)]
    table = pa.table(
        {k: [r[j] for r in rows] for j, k in enumerate(("query", "product_id", "source", "score"))}
    )
    paths = write_shards(table, tmp_path, "aug", rows=4)
    assert [pq.read_table(p).num_rows for p in paths] == [6, 4]  # q1 is not split
    back = read_pairs(tmp_path / "aug-*.parquet", ("query", "product_id", "score"))
    assert back.equals(table)
    dist = distribution(table)
    assert dist["all"]["pairs"] == 10 and dist["bm25"]["pairs"] == 5
    assert 0 <= dist["all"]["probability"]["share_above_0.5"] <= 1
    with pytest.raises(DataError, match="no file matches"):
        read_pairs(tmp_path / "none-*.parquet", ("query",))


def test_shards_of_a_labelling_run_in_progress_keep_whole_queries(tmp_path):
    import subprocess
    import sys

    from reranker.training.shards import joined

    rows = [(f"q{i // 3}", str(i), float(i)) for i in range(9)]

    def table(lo, hi, bias):
        return pa.table(
            {
                "query": [r[0] for r in rows[lo:hi]],
                "product_id": [r[1] for r in rows[lo:hi]],
                "score": [r[2] + bias for r in rows[lo:hi]],
            }
        )

    done = tmp_path / "a.parquet"  # member a finished
    pq.write_table(table(0, 9, 0.0), done)
    running = tmp_path / "b.parquet"  # member b: 5 of 9 rows in finished shards
    shards = tmp_path / "b.parquet.shards"
    shards.mkdir()
    (shards / "label.json").write_text(json.dumps({"rows": 9}))
    pq.write_table(table(0, 4, 1.0), shards / "part-00000.parquet")
    pq.write_table(table(4, 5, 1.0), shards / "part-00001.parquet")
    both, total = joined({"a": done, "b": running})
    assert total == 9 and both.num_rows == 3  # q1 is cut off (rows 3-5): whole queries only
    assert both.column("score_b").to_pylist() == [1.0, 2.0, 3.0]

    ens = tmp_path / "ens.json"
    ens.write_text(
        json.dumps(
            {"members": ["a", "b"], "weights": [0.5, 0.5], "scale": 2.0, "bias": 0.0, "holdout": {}}
        )
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "reranker.training.shards",
            str(tmp_path / "out"),
            "aug",
            "--member",
            f"a={done}",
            "--member",
            f"b={running}",
            "--ensemble",
            str(ens),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "3 of 9 rows" in out and "in progress" in out
    dist = json.loads((tmp_path / "out" / "aug-distribution.json").read_text())
    assert dist["complete"] is False and dist["rows"] == 3
    score = pq.read_table(tmp_path / "out" / "aug-00000.parquet").column("score").to_pylist()
    assert score == pytest.approx([1.0, 3.0, 5.0])  # 2 * (0.5 a + 0.5 b)


def test_distill_reads_every_augmented_pair_unless_told_and_the_control_takes_labels_only(
    splits, tmp_path
):
    from reranker.training.distill import DistillArgs, label_groups, training_groups

    train, _ = splits
    t = pq.read_table(train)
    scored = t.append_column("score", pa.array(np.linspace(-2, 2, t.num_rows)))
    pq.write_table(scored, tmp_path / "s.parquet")
    rng = np.random.default_rng(0)
    args = DistillArgs(labelled=None, catalog="", output="", augmented=str(tmp_path / "s.parquet"))
    groups = training_groups(args, rng)
    assert sum(len(c) for c in groups.values()) == len(TRAIN)  # no --augment-size: all of them
    control = DistillArgs(labelled=str(train), catalog="", output="", loss="labels-bce")
    targets = [s for c in label_groups(control).values() for _, s in c]
    assert len(targets) == t.num_rows and min(targets) >= 0 and max(targets) <= 1
    with pytest.raises(RerankerError, match="no --augmented"):
        label_groups(DistillArgs(**{**control.__dict__, "augmented": str(tmp_path / "s.parquet")}))


@pytest.mark.parametrize("arch", ["cross", "late"])
def test_distill_killed_and_run_again_resumes_to_the_weights_of_an_unbroken_run(
    splits, catalog_csv, tiny_hf_model, tmp_path, monkeypatch, arch
):
    from dataclasses import replace

    from safetensors.torch import load_file

    from reranker.training import distill as d

    train, _ = splits
    t = pq.read_table(train)
    scores = tmp_path / "scores.parquet"
    pq.write_table(t.append_column("score", pa.array(np.linspace(-2, 2, t.num_rows))), scores)
    base = d.DistillArgs(
        labelled=str(scores),
        catalog=str(catalog_csv),
        output=str(tmp_path / "unbroken"),
        student=str(tiny_hf_model),
        arch=arch,
        max_length=32,
        list_size=4,
        batch_pairs=4,  # one list a step: 4 steps an epoch
        epochs=2,
        lr=1e-3,
        threads=1,
        checkpoint_minutes=None,
    )
    unbroken = d.distill(base)
    assert not (unbroken / d.CHECKPOINT).exists()

    real_save = d._save_checkpoint

    def save_then_die(out, state):
        real_save(out, state)
        if state["step"] == 3:
            raise KeyboardInterrupt  # killed after the checkpoint of step 3, dropout in use

    monkeypatch.setattr(d, "_save_checkpoint", save_then_die)
    args = replace(base, output=str(tmp_path / "killed"), checkpoint_minutes=0.0)
    with pytest.raises(KeyboardInterrupt):
        d.distill(args)
    assert [p.name for p in (tmp_path / "killed").iterdir()] == [d.CHECKPOINT]
    with pytest.raises(RerankerError, match=r"other settings \(lr\).*--overwrite"):
        d.distill(replace(args, lr=1e-2))  # another run's checkpoint is never continued
    original = pq.read_table(scores)
    other = pa.array(np.linspace(-3, 3, t.num_rows))
    pq.write_table(original.set_column(t.num_columns, "score", other), scores)
    with pytest.raises(RerankerError, match="other training pairs or scores"):
        d.distill(args)  # nor on other scores under the same file name
    pq.write_table(original, scores)
    saved_at: list[int] = []

    def record(out, state):
        saved_at.append(state["step"])
        real_save(out, state)

    monkeypatch.setattr(d, "_save_checkpoint", record)
    resumed = d.distill(args)
    assert saved_at == [4, 5, 6, 7]  # steps 1-3 were not run again; none after the last
    assert not (resumed / d.CHECKPOINT).exists()
    a, b = load_file(unbroken / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = [json.loads((o / "distill_args.json").read_text()) for o in (unbroken, resumed)]
    assert meta[0]["steps"] == meta[1]["steps"] == 8
    assert meta[0]["pairs_seen"] == meta[1]["pairs_seen"]
    assert meta[0]["final_loss_last100"] == meta[1]["final_loss_last100"]
    with pytest.raises(RerankerError, match="not empty"):
        d.distill(args)  # finished: a rerun does not train again over it
    saved_at.clear()
    d.distill(replace(args, overwrite=True))  # --overwrite: from the first step
    assert saved_at == [1, 2, 3, 4, 5, 6, 7]

    # SIGTERM (a machine going away) or Ctrl-C: the step ends, a checkpoint, the run stops
    stopped = replace(args, output=str(tmp_path / "stopped"), checkpoint_minutes=60.0)
    real_pairs, calls = d._batch_pairs, []

    def terminated_in_step_3(a, batch):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_pairs(a, batch)

    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(d, "_batch_pairs", terminated_in_step_3)
    saved_at.clear()
    with pytest.raises(d.TrainingStopped, match="step 3 of 8.*run the same command"):
        d.distill(stopped)
    assert saved_at == [3] and signal.getsignal(signal.SIGTERM) == handler
    monkeypatch.setattr(d, "_batch_pairs", real_pairs)
    b = load_file(d.distill(stopped) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_that_cannot_be_continued_is_refused_in_one_line_and_kept(tmp_path):
    from reranker.training import distill as d

    out = tmp_path / "student"
    out.mkdir()
    args = d.DistillArgs(labelled="s.parquet", catalog="c.csv", output=str(out))
    torch.save({"args": d._resume_key(args, "fp32"), "step": 3}, out / d.CHECKPOINT)
    with pytest.raises(RerankerError, match=r"lacks data, .*another version.*--overwrite"):
        d._checkpoint_to_resume(args, out, "fp32")
    (out / d.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(RerankerError, match="cannot be read as a checkpoint.*--overwrite"):
        d._checkpoint_to_resume(args, out, "fp32")
    assert (out / d.CHECKPOINT).read_bytes() == b"not a checkpoint"


def test_label_weight_mixes_judged_labels_on_the_teachers_scale_and_leaves_augmented_pairs(
    splits, tmp_path
):
    from reranker.training.distill import DistillArgs, training_groups

    train, _ = splits
    t = pq.read_table(train)
    teacher = np.linspace(-2, 2, t.num_rows)
    pq.write_table(t.append_column("score", pa.array(teacher)), tmp_path / "s.parquet")
    aug = pa.table(
        {"query": ["unjudged query"] * 2, "product_id": ["1", "2"], "score": [0.3, -0.7]}
    )
    pq.write_table(aug, tmp_path / "aug.parquet")
    base = DistillArgs(
        labelled=str(tmp_path / "s.parquet"),
        catalog="",
        output="",
        augmented=str(tmp_path / "aug.parquet"),
    )

    def targets(weight):
        info: dict = {}
        args = DistillArgs(**{**base.__dict__, "label_weight": weight})
        groups = training_groups(args, np.random.default_rng(0), info)
        return {(q, p): s for q, c in groups.items() for p, s in c}, info

    plain, none = targets(0.0)
    labels_only, scale = targets(1.0)
    half, _ = targets(0.5)
    assert none == {}  # plain distillation reads the teacher's scores, nothing mixed
    judged = [k for k in plain if k[0] != "unjudged query"]
    y = (t.column("relevance").to_numpy() - 1) / 2
    mapped = scale["label_scale_a"] + scale["label_scale_b"] * y
    # the label put on the teacher's scale: the same mean and spread as the teacher's scores
    assert mapped.mean() == pytest.approx(teacher.mean(), abs=1e-6)
    assert mapped.std() == pytest.approx(teacher.std())
    assert sorted(labels_only[k] for k in judged) == pytest.approx(sorted(mapped))
    for k in judged:
        assert half[k] == pytest.approx((plain[k] + labels_only[k]) / 2)
    for k in (("unjudged query", "1"), ("unjudged query", "2")):  # augmented: the teacher's
        assert plain[k] == labels_only[k] == half[k]
    with pytest.raises(RerankerError, match="labels-bce uses labels alone"):
        training_groups(
            DistillArgs(**{**base.__dict__, "loss": "labels-bce", "label_weight": 0.5}),
            np.random.default_rng(0),
        )


def test_holdout_split_is_seeded_and_disjoint(splits, tmp_path):
    from reranker.training.holdout import main as holdout

    train, _ = splits
    pq.write_table(
        pq.read_table(train).append_column("score", pa.array([0.0] * len(TRAIN))),
        tmp_path / "scores.parquet",
    )
    for out in ("a", "b"):
        holdout(
            [
                str(train),
                str(tmp_path / out),
                "--fraction",
                "0.3",
                "--scores",
                str(tmp_path / "scores.parquet"),
                "--part",
                "0.5",
            ]
        )
    a = {
        f: pq.read_table(tmp_path / "a" / f)
        for f in (
            "train_members.parquet",
            "train_holdout.parquet",
            "scores_members.parquet",
            "scores_part.parquet",
        )
    }
    assert all(a[f].equals(pq.read_table(tmp_path / "b" / f)) for f in a)
    held = set(a["train_holdout.parquet"].column("query").to_pylist())
    members = set(a["train_members.parquet"].column("query").to_pylist())
    assert held and members and not held & members
    assert a["train_members.parquet"].num_rows + a["train_holdout.parquet"].num_rows == len(TRAIN)
    assert set(a["scores_part.parquet"].column("query").to_pylist()) < members


def test_decoder_llm_pairs_become_one_prompt_and_encoder_pairs_keep_their_form(tiny_hf_model):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from reranker.training.teacher import encode_pairs

    words = "Query: Product: cordless drill dewalt 20v </s> [UNK]".split()
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    decoder = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="</s>")
    enc = encode_pairs(decoder, ["cordless drill"], ["dewalt 20v"], 32)
    assert decoder.decode(enc["input_ids"][0]) == "Query: cordless drill Product: dewalt 20v"
    encoder = AutoTokenizer.from_pretrained(tiny_hf_model)
    enc = encode_pairs(encoder, ["drill"], ["hose"], 32)
    assert enc["input_ids"][0].tolist().count(encoder.sep_token_id) == 2


def test_train_teacher_reads_a_gguf_decoder_llm(tmp_path, splits, catalog_csv):
    """The paper's LLM member as this project trains it (SmolLM2's GGUF file, tiny here): read
    through transformers' GGUF loader, fine-tuned in full through its classification head,
    pairs as one prompt (its tokenizer has no separator), saved as a plain model that labels."""
    from conftest import build_tiny_gguf
    from transformers import AutoTokenizer

    train, _ = splits
    gguf_file = build_tiny_gguf(tmp_path / "tiny-llm.gguf")
    teacher = tmp_path / "teacher-llm"
    cli(
        "train-teacher", "--model", gguf_file, "--train", train, "--catalog", catalog_csv,
        "--output", teacher, "--batch-size", "4", "--lr", "1e-2", "--max-length", "48",
        "--precision", "fp32",
    )  # fmt: skip
    assert AutoTokenizer.from_pretrained(teacher).sep_token is None  # the prompt form applies
    assert json.loads((teacher / "teacher_args.json").read_text())["model"] == str(gguf_file)
    cli(
        "label", train, "--teacher", teacher, "--catalog", catalog_csv,
        "--output", tmp_path / "llm_train.parquet", "--precision", "fp32",
    )  # fmt: skip
    scores = pq.read_table(tmp_path / "llm_train.parquet").column("score").to_numpy()
    assert len(scores) == len(TRAIN) and np.all(np.isfinite(scores)) and np.ptp(scores) > 0


@pytest.mark.parametrize("offset,spread", [(0.0, 1.0), (40.0, 8.0), (-300.0, 50.0)])
def test_platt_fit_recovers_the_curve_whatever_the_score_level(offset, spread):
    """A margin-trained student's raw scores sit at any level and spread (the loss fixes only
    differences): the fit must not diverge there (it once returned a scale of 1e9)."""
    from reranker.training.calibrate import fit_platt

    z = np.random.default_rng(0).normal(size=4000)
    target = 1 / (1 + np.exp(-(1.5 * z + 0.8)))
    scale, bias = fit_platt(z * spread + offset, target)
    assert scale == pytest.approx(1.5 / spread, rel=1e-4)
    assert bias == pytest.approx(0.8 - 1.5 * offset / spread, abs=1e-3)
