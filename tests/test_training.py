import json

import numpy as np
import pytest

from reranker.training.data import load_judged_pairs, soft_targets


def test_soft_targets_map_relevance_into_unit_interval():
    np.testing.assert_allclose(soft_targets(np.array([1.0, 2.0, 3.0, 2.33])), [0, 0.5, 1, 0.665])
    with pytest.raises(ValueError, match=r"relevance must lie in \[1.0, 3.0\]; found .* 3.5"):
        soft_targets(np.array([1.0, 3.5]))


@pytest.fixture
def judged_file(tmp_path, write_judged):
    rows = [
        ("cordless drill", "p001", 3.0),
        ("cordless drill", "p007", 1.0),
        ("cordless drill", "p029", 2.33),
        ("garden hose", "p007", 3.0),
        ("garden hose", "p008", 2.67),
        ("garden hose", "p013", 1.0),
        ("toilet seat", "p013", 3.0),
        ("toilet seat", "p014", 2.67),
    ]
    return write_judged(tmp_path / "train.parquet", rows)


def test_judged_pairs_use_the_shared_product_text(judged_file, catalog_csv):
    pairs = load_judged_pairs(str(judged_file), str(catalog_csv), ["brand"])
    title = "DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit"
    assert pairs.text[0] == f"{title} | brand: DEWALT"
    assert pairs.relevance.tolist()[:2] == [3.0, 1.0]


def test_teacher_trains_and_exports(tmp_path, judged_file, catalog_csv, tiny_hf_model):
    from reranker import CrossEncoder
    from reranker.training.export import export_model
    from reranker.training.teacher import TeacherArgs, train_teacher

    out = train_teacher(
        TeacherArgs(
            model=str(tiny_hf_model),
            train=str(judged_file),
            catalog=str(catalog_csv),
            output=str(tmp_path / "teacher"),
            batch_size=4,
            lr=1e-3,
            epochs=3,
            max_length=32,
        )
    )
    meta = json.loads((out / "teacher_args.json").read_text())
    assert meta["steps"] == 6
    model = CrossEncoder(export_model(out, tmp_path / "onnx", max_length=32, int8=False))
    assert model.score("drill", ["Cordless Drill"]).raw.shape == (1,)


def test_report_table_and_plot(tmp_path):
    from reranker.training.report import load, plot, table

    def metrics(ndcg, acc):
        return {
            "ndcg10": ndcg,
            "pair_accuracy": acc,
            "queries": 1006,
            "pair_queries": 891,
            "rmse": None,
            "e2e_ndcg10": 0.63,
        }

    (tmp_path / "eval_bm25.json").write_text(json.dumps(metrics(0.875, 0.565)))
    (tmp_path / "eval_teacher.json").write_text(json.dumps(metrics(0.89, 0.63)))
    for size, acc in ((0, 0.60), (100, 0.62)):
        (tmp_path / f"eval_student-L6-listwise-aug{size}.json").write_text(
            json.dumps(metrics(0.88, acc))
        )
    (tmp_path / "wall_seconds.txt").write_text("teacher 600\nstudent-L6-listwise-aug100 120\n")
    fixed, students, walls = load(tmp_path)
    assert [s for s, _, _ in students] == [0, 100]
    text = table(fixed, students, walls)
    assert "| teacher | — | 0.8900 | 0.6300 | — | 0.6300 | 10 min |" in text
    assert "| student-L6-listwise-aug100 | 100 | 0.8800 | 0.6200 |" in text
    plot(fixed, students, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def tiny_decoder_llm(out, tokenizer_dir):
    """A random 2-layer Llama (a decoder LLM) with the tiny test vocabulary."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_lora_teacher_on_a_decoder_llm(tmp_path, judged_file, catalog_csv, tiny_hf_model):
    from transformers import AutoModelForSequenceClassification

    from reranker.training.label import TorchScorer
    from reranker.training.teacher import TeacherArgs, train_teacher

    base = tiny_decoder_llm(tmp_path / "llm", tiny_hf_model)
    before = AutoModelForSequenceClassification.from_pretrained(base).state_dict()
    out = train_teacher(
        TeacherArgs(
            model=str(base),
            train=str(judged_file),
            catalog=str(catalog_csv),
            output=str(tmp_path / "teacher"),
            batch_size=4,
            lr=1e-2,
            epochs=2,
            max_length=32,
            lora_r=4,
        )
    )
    merged = AutoModelForSequenceClassification.from_pretrained(out)  # a plain model: merged
    after = merged.state_dict()
    assert not any("lora" in k for k in after)
    moved = [k for k in before if not np.allclose(before[k].numpy(), after[k].numpy())]
    assert any("q_proj" in k for k in moved) and any(k.startswith("score") for k in moved)
    assert json.loads((out / "teacher_args.json").read_text())["lora_r"] == 4
    scores = TorchScorer(str(out))(["cordless drill"] * 2, ["Cordless Drill", "Garden Hose"])
    assert np.all(np.isfinite(scores))


def test_teacher_keeps_the_first_layers(tmp_path, judged_file, catalog_csv, tiny_hf_model):
    from transformers import AutoConfig

    from reranker.errors import RerankerError
    from reranker.training.teacher import TeacherArgs, train_teacher

    args = TeacherArgs(
        model=str(tiny_hf_model),
        train=str(judged_file),
        catalog=str(catalog_csv),
        output=str(tmp_path / "control"),
        batch_size=4,
        max_length=32,
        layers=1,
    )
    out = train_teacher(args)
    assert AutoConfig.from_pretrained(out).num_hidden_layers == 1
    args.layers, args.output = 7, str(tmp_path / "bad")
    with pytest.raises(RerankerError, match=r"--layers must be 1..2, not 7"):
        train_teacher(args)


def test_ship_installs_the_int8_model_with_its_card(tmp_path, tiny_model, monkeypatch):
    from reranker import CrossEncoder
    from reranker.errors import ModelError
    from reranker.training import ship

    out = ship.ship(tiny_model, tmp_path / "default", "# card\n")
    model = CrossEncoder(out)
    assert model.variant == "int8" and set(model.config.files) == {"int8"}
    assert (out / "MODEL_CARD.md").read_text() == "# card\n"
    assert sorted(p.name for p in out.iterdir()) == [
        "MODEL_CARD.md",
        "model.int8.onnx",
        "reranker.json",
        "tokenizer.json",
    ]
    monkeypatch.setattr(ship, "MAX_MB", 0.0001)
    with pytest.raises(ModelError, match=r"must be at most 0.0001 MB"):
        ship.ship(tiny_model, tmp_path / "too-big", "# card\n")


def test_lora_teacher_resumes_from_its_adapter_checkpoint(
    tmp_path, judged_file, catalog_csv, tiny_hf_model, monkeypatch
):
    from reranker.training import teacher

    base = tiny_decoder_llm(tmp_path / "llm", tiny_hf_model)
    args = teacher.TeacherArgs(
        model=str(base),
        train=str(judged_file),
        catalog=str(catalog_csv),
        output=str(tmp_path / "teacher"),
        batch_size=2,
        lr=1e-2,
        epochs=1,
        max_length=32,
        lora_r=4,
        checkpoint_minutes=0.0,  # a checkpoint after every step
    )
    real_save = teacher._save

    def save_then_die(model, tokenizer, ckpt, optimizer, scheduler, step):
        real_save(model, tokenizer, ckpt, optimizer, scheduler, step)
        if step == 2:
            raise KeyboardInterrupt  # killed after the checkpoint of step 2

    monkeypatch.setattr(teacher, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        teacher.train_teacher(args)
    assert (tmp_path / "teacher" / "checkpoint" / "adapter_config.json").is_file()
    saved_at = []

    def record(model, tokenizer, ckpt, optimizer, scheduler, step):
        saved_at.append(step)
        real_save(model, tokenizer, ckpt, optimizer, scheduler, step)

    monkeypatch.setattr(teacher, "_save", record)
    out = teacher.train_teacher(args)  # resumes at step 2 of 4
    assert saved_at == [3]  # steps 1 and 2 were not run again
    assert json.loads((out / "teacher_args.json").read_text())["steps"] == 4
    assert not (out / "adapter_config.json").exists()  # merged: a plain model


def test_bf16_linear_labelling_wraps_every_linear_but_the_head(tiny_hf_model):
    """`--precision bf16-linear`: bf16 in the linear layers, float32 around them and in the
    head; the scores stay close to fp32 (on a CPU without native bf16 it is emulated: slow, a
    warning, the same numbers)."""
    import warnings

    import torch

    from reranker.errors import RerankerError
    from reranker.training.label import TorchScorer
    from reranker.training.precision import resolve_precision

    queries, texts = ["cordless drill"] * 3, ["Cordless Drill", "Garden Hose", "LED Bulb 60W"]
    fp32 = TorchScorer(str(tiny_hf_model), precision="fp32")(queries, texts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scorer = TorchScorer(str(tiny_hf_model), precision="bf16-linear")
    linears = {n: m for n, m in scorer.model.named_modules() if isinstance(m, torch.nn.Linear)}
    wrapped = {n for n, m in linears.items() if "forward" in m.__dict__}
    assert wrapped and all(not n.startswith("classifier") for n in wrapped)
    assert wrapped == {n for n in linears if not n.startswith("classifier")}
    got = scorer(queries, texts)
    assert got.dtype == np.float32 and np.allclose(got, fp32, atol=0.05)
    with pytest.raises(RerankerError, match="precision must be one of"):
        resolve_precision("bf16-linear")  # training takes fp32 or bf16 autocast only


def _student_copy(src, dst, seed: int, shift: float, **args):
    """A copy of a tiny HF model as a student directory, its float weights shifted by ``shift``."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    state = {
        k: v + shift if v.is_floating_point() else v
        for k, v in load_file(dst / "model.safetensors").items()
    }
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    meta = {
        "student": "tiny",
        "layers": None,
        "fields": ["brand"],
        "max_length": 32,
        "arch": "cross",
    }
    (dst / "distill_args.json").write_text(json.dumps({**meta, **args, "seed": seed}))
    return dst


def test_a_soup_is_the_mean_of_its_students_and_exports_like_one(tmp_path, tiny_hf_model):
    from safetensors.torch import load_file

    from reranker import CrossEncoder
    from reranker.training.export import export_model
    from reranker.training.soup import make_soup

    a = _student_copy(tiny_hf_model, tmp_path / "a", 13, 0.0)
    b = _student_copy(tiny_hf_model, tmp_path / "b", 14, 0.5)
    soup = make_soup([a, b], tmp_path / "soup")
    wa, wb, ws = (load_file(d / "model.safetensors") for d in (a, b, soup))
    for name, w in ws.items():
        if w.is_floating_point():
            np.testing.assert_allclose(w.numpy(), ((wa[name] + wb[name]) / 2).numpy(), atol=1e-6)
        else:
            assert (w == wa[name]).all()
    meta = json.loads((soup / "distill_args.json").read_text())
    assert [s["seed"] for s in meta["soup_of"]] == [13, 14] and meta["fields"] == ["brand"]
    model = CrossEncoder(
        export_model(soup, tmp_path / "soup-onnx", max_length=32, fields=["brand"])
    )
    assert model.score("drill", ["DEWALT drill", "hose"]).raw.shape == (2,)


def test_a_soup_of_students_of_different_recipes_is_refused(tmp_path, tiny_hf_model):
    from reranker.training.soup import make_soup

    a = _student_copy(tiny_hf_model, tmp_path / "a", 13, 0.0)
    b = _student_copy(tiny_hf_model, tmp_path / "b", 14, 0.0, max_length=48)
    with pytest.raises(SystemExit, match="differ in max_length"):
        make_soup([a, b], tmp_path / "soup")
    with pytest.raises(SystemExit, match="at least two"):
        make_soup([a], tmp_path / "soup")
    with pytest.raises(SystemExit, match="not a trained student: model.safetensors, distill_args"):
        make_soup([a, tmp_path], tmp_path / "soup")
    make_soup([a, a], tmp_path / "soup")
    with pytest.raises(SystemExit, match="already holds a model"):
        make_soup([a, a], tmp_path / "soup")


def test_fields_study_compares_the_title_alone_and_sets_what_a_student_reads(
    tmp_path, tiny_model, catalog_csv, write_judged
):
    """Every field set on both files, chosen on the held-out file; `--set` rewrites only the
    config's fields, keeps the trained ones and drops a calibration that no longer applies."""
    import shutil

    from reranker.models import open_model
    from reranker.training import fields

    held = write_judged(
        tmp_path / "held.parquet",
        [("cordless drill", "p001", 3.0), ("cordless drill", "p007", 1.0), ("drill", "p004", 2.0)],
    )
    dev = write_judged(
        tmp_path / "dev.parquet",
        [("hammer drill", "p002", 3.0), ("hammer drill", "p013", 1.33)],
    )
    out = tmp_path / "fields.json"
    args = ["--choose-on", str(held), "--report-on", str(dev), "--catalog", str(catalog_csv)]
    fields.main([str(tiny_model), "--try", "", "--try", "color", *args, "--output", str(out)])
    result = json.loads(out.read_text())
    assert result["own_fields"] == "title+brand+color"
    labels = [r["fields"] for r in result["rows"] if r["set"] == "choose"]
    assert labels == ["title+brand+color", "title", "title+color"]
    choose = {r["fields"]: r["pair_accuracy"] for r in result["rows"] if r["set"] == "choose"}
    assert choose[result["chosen"]] == max(choose.values())
    assert set(result["gain_over_own"]) == {"choose", "report", "pooled"}
    with pytest.raises(SystemExit):  # a comparison without its files
        fields.main([str(tiny_model), "--try", ""])
    with pytest.raises(SystemExit):  # a field the catalog does not have: refused, not ignored
        fields.main([str(tiny_model), "--try", "colour", *args, "--output", str(out)])

    model_dir = shutil.copytree(tiny_model, tmp_path / "m")
    cfg_path = model_dir / "reranker.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["calibration"] = {"scale": 2.0, "bias": 0.5}
    cfg_path.write_text(json.dumps(cfg))
    fields.main([str(model_dir), "--set", ""])
    cfg = json.loads(cfg_path.read_text())
    assert cfg["fields"] == [] and cfg["calibration"] == {}
    assert cfg["metadata"]["trained_fields"] == ["brand", "color"]
    assert cfg["metadata"]["dropped_calibration"]["scale"] == 2.0
    model = open_model(model_dir)
    assert model.config.fields == () and model.config.metadata["name"] == "tiny-test-model"
    fields.main([str(model_dir), "--set", "color"])  # the trained fields stay the first ones
    cfg = json.loads(cfg_path.read_text())
    assert cfg["fields"] == ["color"] and cfg["metadata"]["trained_fields"] == ["brand", "color"]
    with pytest.raises(SystemExit):  # not a student's directory: one line, no traceback
        fields.main([str(tmp_path), "--set", ""])


def test_same_weights_tells_a_reexport_from_another_student(tmp_path, tiny_hf_model, capsys):
    from reranker.training.export import export_model
    from reranker.training.sameweights import compare, main

    a = _student_copy(tiny_hf_model, tmp_path / "a", 13, 0.0)
    b = _student_copy(tiny_hf_model, tmp_path / "b", 14, 0.5)
    first, again, other = (
        export_model(src, tmp_path / name, max_length=32)
        for src, name in ((a, "first"), (a, "again"), (b, "other"))
    )
    int8 = "model.int8.onnx"
    same = compare(first / int8, again / int8)
    assert same["same"] and same["different"] == 0 and same["identical"] > 0
    differs = compare(first / int8, other / int8)
    assert not differs["same"] and differs["different"] > 0
    assert differs["largest_differences"][0]["max_abs_diff"] > 0
    assert main([str(first / int8), str(again / int8)]) == 0
    capsys.readouterr()
    assert main([str(first / int8), str(other / int8)]) == 1
    assert json.loads(capsys.readouterr().out)["same"] is False
    assert main([str(first / int8)]) == 2
    assert main([str(first / int8), str(tmp_path / "missing.onnx")]) == 2
    (tmp_path / "not.onnx").write_text("not a graph")
    assert main([str(first / int8), str(tmp_path / "not.onnx")]) == 2
    assert "error: not two ONNX graphs" in capsys.readouterr().err
