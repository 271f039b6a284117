import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from reranker import __version__
from reranker.cli import main
from reranker.index import BM25Index


@pytest.fixture
def run():
    def invoke(*args, env=None):
        return CliRunner().invoke(main, [str(a) for a in args], env=env or {"RERANKER_MODEL": ""})

    return invoke


def test_version_and_help_on_every_command(run):
    assert __version__ in run("--version").output
    for cmd in ([], ["index"], ["search"]):
        result = run(*cmd, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_index_then_search_first_stage_only(run, tmp_path, catalog_csv):
    idx = tmp_path / "idx"
    result = run("index", catalog_csv, "--index-dir", idx, "-q")
    assert result.exit_code == 0, result.output
    assert "indexed 30 products, skipped 0" in result.output
    result = run("search", "cordless drill", "--index-dir", idx, "--no-rerank", "-n", "3")
    assert result.exit_code == 0, result.output
    assert "hybrid (BM25 + dense) order, not reranked" in result.output
    assert "retrieval" in result.output and "ms" in result.output
    assert len([ln for ln in result.output.splitlines() if ln[:3].strip().isdigit()]) == 3


def test_index_bm25_parameters(run, tmp_path, catalog_csv):
    default, custom = tmp_path / "default", tmp_path / "custom"
    assert run("index", catalog_csv, "--index-dir", default, "-q", "--no-dense").exit_code == 0
    result = run(
        "index", catalog_csv, "--index-dir", custom, "-q", "--no-dense",
        "--bm25-k1", "1.5", "--bm25-b", "0.75",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    params = [BM25Index.load(d).params for d in (default, custom)]
    assert [(p["k1"], p["b"]) for p in params] == [(0.3, 0.4), (1.5, 0.75)]
    scores = [BM25Index.load(d).retrieve("green hose", 1)[0].score for d in (default, custom)]
    assert scores[0] != scores[1]
    result = run("index", catalog_csv, "--index-dir", tmp_path / "bad", "--bm25-b", "2")
    assert result.exit_code != 0 and "--bm25-b" in result.output


def test_search_table_decodes_html_references_json_keeps_the_stored_text(run, tmp_path):
    catalog = tmp_path / "scraped.csv"
    catalog.write_text(
        "product_id,title\n"
        "m1,Toro 22 in. Gas Lawn Mower with Briggs &amp; Stratton Engine\n"
        "m2,Corner Baker&#39;s Rack with Slate Top\n"
        "m3,&quot;Quiet&quot; Electric Lawn Mower <cordless>\n"
    )
    idx = tmp_path / "idx"
    assert run("index", catalog, "--index-dir", idx, "-q").exit_code == 0
    table = run("search", "lawn mower", "--index-dir", idx, "--no-rerank").output
    assert "Briggs & Stratton" in table and '"Quiet" Electric Lawn Mower <cordless>' in table
    assert "&amp;" not in table and "&quot;" not in table
    result = run("search", "baker rack", "--index-dir", idx, "--no-rerank", "--json")
    stored = json.loads(result.output)["results"][0]["title"]
    assert stored == "Corner Baker&#39;s Rack with Slate Top"


def test_search_says_what_it_searched_a_misspelt_word_as(run, built_index):
    table = run("search", "gardn hose", "--index-dir", built_index, "--no-rerank").output
    assert "searched as: gardn → garden" in table
    result = run("search", "gardn hose", "--index-dir", built_index, "--no-rerank", "--json")
    assert json.loads(result.output)["corrected"] == {"gardn": "garden"}
    plain = run("search", "garden hose", "--index-dir", built_index, "--no-rerank").output
    assert "searched as" not in plain
    exact = run("search", "gardn hose", "--index-dir", built_index, "--no-rerank", "--exact-words")
    assert exact.exit_code == 0 and "searched as" not in exact.output


def test_search_with_model_table_and_json(run, built_index, tiny_model):
    result = run("search", "cordless drill", "--index-dir", built_index, "--model", tiny_model)
    assert result.exit_code == 0, result.output
    assert "reranked by tiny-test-model" in result.output
    assert "first#" in result.output
    result = run(
        "search",
        "garden hose",
        "--index-dir",
        built_index,
        "--model",
        tiny_model,
        "--json",
        "-n",
        "4",
    )
    data = json.loads(result.output)
    assert data["reranked"] is True and len(data["results"]) == 4
    first = data["results"][0]
    assert {
        "product_id",
        "title",
        "rank",
        "retrieval_rank",
        "retrieval_score",
        "rerank_score",
        "rerank_probability",
        "fields",
    } <= set(first)
    assert set(data["timings"]) == {"retrieve_ms", "rerank_ms", "total_ms"}


def test_default_model_from_environment(run, built_index, tiny_model):
    result = run(
        "search", "drill", "--index-dir", built_index, env={"RERANKER_MODEL": str(tiny_model)}
    )
    assert result.exit_code == 0 and "reranked by tiny-test-model" in result.output


def one_line_error(result, *fragments):
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_search_without_model_says_so(run, built_index, tmp_path, monkeypatch):
    import reranker.pipeline

    monkeypatch.setattr(reranker.pipeline, "PACKAGED_MODEL_DIR", tmp_path / "no-model")
    one_line_error(
        run("search", "drill", "--index-dir", built_index),
        "no reranker model is installed",
        "--no-rerank",
        "--model",
    )


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_query(run, built_index, query):
    one_line_error(
        run("search", query, "--index-dir", built_index, "--no-rerank"), "query is empty"
    )


def test_very_long_query_is_truncated_not_a_crash(run, built_index, tiny_model):
    result = run(
        "search",
        "cordless drill " * 20_000,
        "--index-dir",
        built_index,
        "--model",
        tiny_model,
        "-n",
        "2",
    )
    assert result.exit_code == 0, result.output[-500:]


def test_search_missing_index_and_bad_model(run, tmp_path, built_index):
    one_line_error(
        run("search", "drill", "--index-dir", tmp_path / "none", "--no-rerank"), "no index at"
    )
    one_line_error(
        run("search", "drill", "--index-dir", built_index, "--model", tmp_path),
        "reranker.json is missing",
    )


BAD_ROWS = "product_id,title\nA1,Hammer\n,No id\nA3,\nA1,Dup\nA5,Saw\n"


@pytest.mark.parametrize(
    "name,content,args,fragments",
    [
        (
            "bad.csv",
            BAD_ROWS,
            [],
            [
                "3 invalid row(s)",
                "row 2: missing id",
                "row 3: missing title",
                "row 4: duplicate id 'A1'",
                "--skip-invalid",
            ],
        ),
        ("bytes.csv", b"product_id,title\nA1,Bad \xff bytes\n", [], ["undecodable bytes"]),
        ("empty.csv", "", [], ["catalog is empty"]),
        ("ok.csv", "product_id,title\nA1,Hammer\n", ["--fields", "brand"], ["'brand'", "--fields"]),
        ("ok.csv", "product_id,title\nA1,Hammer\n", ["--id-field", "sku"], ["'sku'", "--id-field"]),
    ],
)
def test_index_bad_input_is_one_line_and_nonzero(run, tmp_path, name, content, args, fragments):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    result = run("index", path, "--index-dir", tmp_path / "idx", "-q", *args)
    one_line_error(result, *fragments)
    assert not (tmp_path / "idx" / "CURRENT").exists()


def test_index_skip_invalid_reports_counts_and_rows(run, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD_ROWS)
    result = run("index", path, "--index-dir", tmp_path / "idx", "-q", "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert "indexed 2 products, skipped 3" in result.output
    assert "row 2: missing id" in result.output and "row 4: duplicate id 'A1'" in result.output
    skipped = json.loads(next((tmp_path / "idx").glob("gen-*/skipped.json")).read_text())
    assert [s["row"] for s in skipped] == [2, 3, 4]


def test_reindex_needs_overwrite(run, tmp_path, catalog_csv):
    idx = tmp_path / "idx"
    assert run("index", catalog_csv, "--index-dir", idx, "-q").exit_code == 0
    one_line_error(run("index", catalog_csv, "--index-dir", idx, "-q"), "--overwrite")
    assert run("index", catalog_csv, "--index-dir", idx, "-q", "--overwrite").exit_code == 0


def test_index_dir_from_environment(run, tmp_path, catalog_csv):
    env = {"RERANKER_INDEX": str(tmp_path / "envidx"), "RERANKER_MODEL": ""}
    assert run("index", catalog_csv, "-q", env=env).exit_code == 0
    assert run("search", "hose", "--no-rerank", env=env).exit_code == 0


def test_index_stores_token_ids_for_the_model(tmp_path, catalog_csv, tiny_model):
    from click.testing import CliRunner

    from reranker import BM25Index
    from reranker.cli import main

    runner = CliRunner()
    out = tmp_path / "idx"
    r = runner.invoke(
        main, ["index", str(catalog_csv), "--index-dir", str(out), "-q", "--model", str(tiny_model)]
    )
    assert r.exit_code == 0, r.output
    assert "stored product token ids for model tiny-test-model" in r.output
    assert BM25Index.load(out).product_tokens is not None
    r = runner.invoke(
        main,
        [
            "index",
            str(catalog_csv),
            "--index-dir",
            str(out),
            "-q",
            "--model",
            str(tiny_model),
            "--no-tokens",
            "--overwrite",
        ],
    )
    assert r.exit_code == 0, r.output
    assert BM25Index.load(out).product_tokens is None


def test_the_packaged_student_is_the_default(run, built_index):
    import reranker.pipeline

    assert (reranker.pipeline.PACKAGED_MODEL_DIR / "reranker.json").is_file()
    r = run("search", "cordless drill", "--index-dir", built_index, "--json")
    assert r.exit_code == 0, r.output
    body = json.loads(r.stdout)  # stderr may hold a note (no stored product states)
    from reranker import open_model

    packaged = open_model(reranker.pipeline.PACKAGED_MODEL_DIR)
    assert body["reranked"] and body["model"] == packaged.name
    assert (reranker.pipeline.PACKAGED_MODEL_DIR / "MODEL_CARD.md").is_file()


def test_shipped_profiles_are_selectable_by_name(run, built_index, monkeypatch, tmp_path):
    """`--model accurate` / `open_model("accurate")` / RERANKER_MODEL=accurate pick the shipped
    accurate profile; `fast` is the default's other name; `late` and `cross` are the two students
    alone; a directory of that name wins."""
    from reranker import open_model
    from reranker.errors import ModelError
    from reranker.models import PACKAGED_MODELS, resolve_model_dir

    assert resolve_model_dir("fast") == resolve_model_dir("default") == PACKAGED_MODELS / "default"
    cross = open_model("cross")
    assert cross.config.architecture != "late"  # a full cross-encoder
    default = open_model("default")  # a cascade: the late student, then `cross` on its best 12
    assert default.first.config.architecture == "late" and default.second.name == cross.name
    assert default.first.model_dir == resolve_model_dir("late").resolve()
    assert default.second_k == 12
    accurate = open_model("accurate")  # the same two students, blended over every candidate
    assert accurate.second_k is None and accurate.first_weight == default.first_weight
    assert (accurate.first.name, accurate.second.name) == (default.first.name, cross.name)
    r = run("search", "cordless drill", "--index-dir", built_index, "--model", "accurate", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == accurate.name
    r = run(
        "search",
        "cordless drill",
        "--index-dir",
        built_index,
        "--json",
        env={"RERANKER_MODEL": "accurate"},
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == accurate.name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "accurate").mkdir()  # a local folder of that name is a directory, not the profile
    assert resolve_model_dir("accurate") == Path("accurate")
    with pytest.raises(ModelError, match="profiles are"):
        from reranker.models import packaged_model_dir

        packaged_model_dir("huge")
