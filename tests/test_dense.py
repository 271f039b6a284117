"""The dense first stage: embedder export and runtime, vectors stored with the index, hybrid
retrieval, and `reranker index --dense/--no-dense/--embedder`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from reranker.cli import main
from reranker.embedder import TextEmbedder
from reranker.errors import IndexCorruptError, ModelError
from reranker.index import BM25Index
from reranker.index.build import index_catalog
from reranker.index.dense import EMBEDDER_DIR, VECTORS_FILE


@pytest.fixture(scope="session")
def hybrid_index(tmp_path_factory, catalog_csv, tiny_embedder):
    """Every product a candidate (no similarity floor), as the tiny embedder is random."""
    out = tmp_path_factory.mktemp("hybrid") / "idx"
    index_catalog(catalog_csv, out, embedder=TextEmbedder(tiny_embedder), min_similarity=-1.0)
    return out


def test_export_matches_torch_and_runtime_gives_unit_vectors(tiny_embedder, tiny_hf_model):
    config = json.loads((tiny_embedder / "embedder.json").read_text())
    assert config["format"] == "kd-reranker-embedder" and config["file"] == "model.onnx"
    assert config["metadata"]["parity"]["min_cosine_vs_torch"] > 0.9999
    e = TextEmbedder(tiny_embedder)
    texts = ["cordless drill", "garden hose nozzle with a long name " * 5, "x"]
    v = e.embed(texts)
    assert v.shape == (3, config["dim"]) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([e.embed([t])[0] for t in texts])  # padding must not change a vector
    np.testing.assert_allclose(v, one_by_one, atol=1e-5)
    assert e.embed([]).shape == (0, config["dim"])


def test_int8_export_and_refusals(tmp_path, tiny_hf_model):
    from reranker.training.export_embedder import export_embedder

    out = export_embedder(tiny_hf_model, tmp_path / "e8", max_length=32)
    assert (out / "model.int8.onnx").is_file() and not (out / "model.onnx").exists()
    assert TextEmbedder(out).embed(["drill"]).shape[0] == 1
    with pytest.raises(ModelError, match="not empty; pass --overwrite"):
        export_embedder(tiny_hf_model, out)
    with pytest.raises(ModelError, match="embedder.json is missing"):
        TextEmbedder(tmp_path)


def test_index_stores_vectors_and_a_copy_of_the_embedder(hybrid_index, tiny_embedder):
    index = BM25Index.load(hybrid_index)
    assert index.dense is not None and len(index.dense) == len(index)
    entry = index.manifest["dense"]
    assert entry["weight"] == 1.0 and entry["embedder_key"]["name"] == "tiny-embedder"
    assert entry["min_similarity"] == -1.0
    files = index.manifest["files"]
    assert VECTORS_FILE in files and f"{EMBEDDER_DIR}/model.onnx" in files
    # the stored vectors are the embedder's vectors of each product's text
    products = index.products_at(np.arange(len(index)))
    expected = TextEmbedder(tiny_embedder).embed([p.text() for p in products])
    np.testing.assert_allclose(index.dense.vectors, expected, atol=2e-3)  # stored as float16
    # the embedder's session opens at the first query, or when a server prepares the index
    assert index.dense._embedder is None
    index.prepare()
    assert index.dense._embedder is not None


def test_hybrid_retrieval_is_the_fused_score_with_ties_by_id(hybrid_index):
    index = BM25Index.load(hybrid_index)
    query = "cordless drill"
    cands = index.retrieve(query, k=10)
    bm25 = index.scores(query)
    fused = bm25 / bm25.max() + index.dense.similarities(query)
    assert [c.score for c in cands] == pytest.approx(sorted(fused, reverse=True)[:10])
    assert [c.rank for c in cands] == list(range(1, 11))
    key = [(-round(c.score, 12), c.product.id) for c in cands]
    assert key == sorted(key)
    # every product is a candidate: k beyond the BM25 matches still fills up
    assert len(index.retrieve(query, k=25)) == 25


def test_words_unknown_to_bm25_are_found_by_meaning_and_empty_queries_find_nothing(
    hybrid_index, built_index
):
    hybrid, lexical = BM25Index.load(hybrid_index), BM25Index.load(built_index)
    assert lexical.retrieve("qwertyuiop", k=5) == []
    assert len(hybrid.retrieve("qwertyuiop", k=5)) == 5
    assert hybrid.retrieve("!!! ???", k=5) == [] and hybrid.retrieve("drill", k=0) == []


def test_products_without_a_query_token_need_the_minimum_similarity(hybrid_index):
    index = BM25Index.load(hybrid_index)
    query = "cordless drill"
    bm25, cosine = index.scores(query), index.dense.similarities(query)
    floor = float(np.median(cosine[bm25 == 0]))
    index.dense.min_similarity = floor
    got = {c.row for c in index.retrieve(query, k=30)}
    allowed = set(np.flatnonzero((bm25 > 0) | (cosine >= floor)).tolist())
    assert got <= allowed and len(got) == min(30, len(allowed))
    index.dense.min_similarity = 2.0  # nothing is close enough: BM25's matches only
    assert {c.row for c in index.retrieve(query, k=30)} == set(np.flatnonzero(bm25 > 0).tolist())
    assert index.retrieve("qwertyuiop", k=5) == []


def test_tampered_embedder_is_detected(tmp_path, hybrid_index):
    copy = tmp_path / "idx"
    shutil.copytree(hybrid_index, copy)
    gen = next(copy.glob("gen-*"))
    (gen / EMBEDDER_DIR / "tokenizer.json").write_text("{}")
    with pytest.raises(IndexCorruptError, match="embedder/tokenizer.json does not match"):
        BM25Index.load(copy)


def test_manifest_file_names_cannot_leave_the_index(tmp_path, hybrid_index):
    copy = tmp_path / "idx"
    shutil.copytree(hybrid_index, copy)
    gen = next(copy.glob("gen-*"))
    manifest = json.loads((gen / "manifest.json").read_text())
    manifest["files"]["../outside"] = {"bytes": 1, "sha256": "0"}
    (gen / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="outside it"):
        BM25Index.load(copy)


def test_cli_index_dense_options(tmp_path, catalog_csv, tiny_embedder, monkeypatch):
    monkeypatch.delenv("RERANKER_MODEL", raising=False)
    runner = CliRunner()
    out = tmp_path / "idx"
    args = ["index", str(catalog_csv), "--index-dir", str(out), "-q", "--no-tokens"]
    r = runner.invoke(main, [*args, "--embedder", str(tiny_embedder), "--min-similarity", "0.25"])
    assert r.exit_code == 0, r.output
    assert BM25Index.load(out).dense.min_similarity == 0.25
    assert "stored 32-d product vectors of embedder tiny-embedder" in r.output
    assert "retrieval is hybrid (BM25 + dense)" in r.output
    assert BM25Index.load(out).dense is not None
    r = runner.invoke(main, [*args, "--overwrite", "--no-dense"])
    assert r.exit_code == 0, r.output
    assert "hybrid" not in r.output and BM25Index.load(out).dense is None
    r = runner.invoke(main, [*args, "--overwrite", "--no-dense", "--embedder", str(tiny_embedder)])
    assert r.exit_code == 2 and "--embedder needs --dense" in r.output
    # OpenSearch indexes embed with the shipped embedder, which their retriever embeds queries with
    r = runner.invoke(main, [*args, "--backend", "opensearch", "--embedder", str(tiny_embedder)])
    assert r.exit_code == 2 and "embeds with the embedder shipped" in r.output


def test_shipped_embedder_is_the_default_of_reranker_index(tmp_path, catalog_csv):
    from reranker.models import packaged_embedder_dir

    shipped = packaged_embedder_dir()
    assert shipped is not None, "reranker/models/retriever is missing"
    config = json.loads((shipped / "embedder.json").read_text())
    assert config["metadata"]["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    r = CliRunner().invoke(
        main, ["index", str(catalog_csv), "--index-dir", str(tmp_path / "i"), "-q", "--no-tokens"]
    )
    assert r.exit_code == 0, r.output
    index = BM25Index.load(tmp_path / "i")
    assert index.dense is not None and index.manifest["dense"]["embedder_key"]["name"] == (
        "retriever"
    )
    top = [c.product.title for c in index.retrieve("cordless drill", k=3)]
    assert any("Drill" in t for t in top), top


def test_cli_index_stemmer_option(tmp_path, catalog_csv):
    runner = CliRunner()
    args = ["index", str(catalog_csv), "-q", "--no-tokens", "--no-dense"]
    r = runner.invoke(main, [*args, "--index-dir", str(tmp_path / "a"), "--stemmer", "none"])
    assert r.exit_code == 0, r.output
    index = BM25Index.load(tmp_path / "a")
    assert index.manifest["tokenizer"]["stemmer"] is None
    assert index.query_tokens("drills") == ["drill"]  # unknown, one edit from a catalog word
    index.correct_spelling = False
    assert index.retrieve("drills", 5) == []  # unstemmed, as typed: no product has it
    r = runner.invoke(main, [*args, "--index-dir", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert BM25Index.load(tmp_path / "b").retrieve("drills", 5)
    r = runner.invoke(main, [*args, "--index-dir", str(tmp_path / "c"), "--stemmer", "klingon"])
    assert r.exit_code == 2 and "no Snowball stemmer for 'klingon'" in r.output


def _run_fusion(monkeypatch, index, model, held, dev, catalog, out) -> None:
    """`python -m reranker.training.fusion` with ``model`` as both students."""
    import sys

    from reranker.training import fusion

    args = {"index-dir": index, "first": model, "second": model, "choose-on": held}
    args |= {"report-on": dev, "catalog": catalog, "output": out}
    argv = ["fusion"] + [x for k, v in args.items() for x in (f"--{k}", str(v))]
    monkeypatch.setattr(sys, "argv", argv)
    fusion.main()


def test_fusion_study_grids_the_first_stage_scores_and_chooses_on_held_out_pairs(
    hybrid_index, tiny_model, catalog_csv, write_judged, tmp_path, monkeypatch
):
    """The blend plus weighted cosine and BM25, every grid point on both files, the weights
    chosen on the held-out file only; (0, 0) is the plain blend."""
    from reranker.models import open_model
    from reranker.training import fusion
    from reranker.training.data import catalog_texts
    from reranker.training.evaluate import evaluate, load_judged

    held = write_judged(
        tmp_path / "held.parquet",
        [
            ("cordless drill", "p001", 3.0),
            ("cordless drill", "p007", 1.0),
            ("garden hose", "p007", 3.0),
            ("garden hose", "p013", 1.0),
        ],
    )
    dev = write_judged(
        tmp_path / "dev.parquet",
        [
            ("hammer drill", "p002", 3.0),
            ("hammer drill", "p013", 1.33),
            ("hammer drill", "p004", 2.0),
        ],
    )
    out = tmp_path / "fusion.json"
    _run_fusion(monkeypatch, hybrid_index, tiny_model, held, dev, catalog_csv, out)
    result = json.loads(out.read_text())
    grid = len(fusion.DENSE_GRID) * len(fusion.BM25_GRID)
    assert len(result["rows"]) == 2 * grid
    assert result["files"] == {"choose": "held.parquet", "report": "dev.parquet"}
    choose = [r for r in result["rows"] if r["set"] == "choose"]
    chosen = [r for r in choose if (r["dense"], r["bm25"]) == tuple(result["chosen"].values())]
    assert chosen[0]["pair_accuracy"] == max(r["pair_accuracy"] for r in choose)

    model = open_model(tiny_model)  # first = second, first_weight 0.5: the blend is 1.5 x raw
    texts = catalog_texts(catalog_csv, model.config.fields)
    plain = evaluate(
        load_judged(dev), lambda q, ids: 1.5 * model.score(q, [texts[p] for p in ids]).raw
    )
    (base,) = [
        r for r in result["rows"] if r["set"] == "report" and r["dense"] == 0 and r["bm25"] == 0
    ]
    assert base["pair_accuracy"] == pytest.approx(plain.pair_accuracy)
    assert base["ndcg10"] == pytest.approx(plain.ndcg10)


def test_fusion_study_needs_a_hybrid_index(
    built_index, tiny_model, catalog_csv, tmp_path, monkeypatch
):
    with pytest.raises(SystemExit, match="stores no dense vectors"):
        _run_fusion(
            monkeypatch, built_index, tiny_model, "x", "y", catalog_csv, tmp_path / "f.json"
        )


def test_bm25_parameter_study(hybrid_index, catalog_csv, write_judged, tmp_path, monkeypatch):
    """`python -m reranker.training.first_stage_bm25`: a draw never holds another set's query,
    and the index's own parameters give what the index itself retrieves."""
    import sys

    from reranker.training import first_stage_bm25

    rows = [
        ("cordless drill", "p002", 3.0),
        ("cordless drill", "p013", 1.0),
        ("garden hose", "p007", 3.0),
        ("garden hose", "p010", 1.33),
        ("toilet seat", "p013", 3.0),
        ("toilet seat", "p002", 1.0),
    ]
    train = write_judged(tmp_path / "train.parquet", rows)
    held = write_judged(tmp_path / "held.parquet", rows[:2])
    sets = first_stage_bm25.query_sets([f"held={held}", f"train={train}:2"])
    assert sets["held"][1] == ["cordless drill"]
    assert sets["train"][1] == ["garden hose", "toilet seat"]  # the held query left out
    out = tmp_path / "bm25.json"
    argv = ["first_stage_bm25", "--index-dir", str(hybrid_index), "--catalog", str(catalog_csv)]
    argv += ["--judged", f"held={held}", "--judged", f"train={train}:2"]
    argv += ["--k1", "0.3,1.5", "--b", "0.4", "--output", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    first_stage_bm25.main()
    points = json.loads(out.read_text())["points"]
    assert sorted(points) == ["k1=0.3,b=0.4,w=1.0", "k1=1.5,b=0.4,w=1.0"]
    index = BM25Index.load(hybrid_index)
    judged = sets["train"][0]
    own = first_stage_bm25.measure(index, {"train": (judged, sets["train"][1])}, None)
    assert points["k1=0.3,b=0.4,w=1.0"]["train"] == own["train"]
    assert 0 <= own["train"]["recall"] <= 1 and "reranked_e2e" not in own["train"]
