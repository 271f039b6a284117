import dataclasses
import subprocess
import sys
import textwrap

import pytest

from reranker import BM25Index, CrossEncoder, QueryError, SearchPipeline


def test_end_to_end_index_search_rerank(built_index, tiny_model):
    model = CrossEncoder(tiny_model)
    response = SearchPipeline(BM25Index.load(built_index), model, k=20, n=5).search(
        "cordless drill"
    )
    assert response.reranked and response.model == "tiny-test-model"
    assert response.candidates == len(BM25Index.load(built_index).retrieve("cordless drill", 20))
    assert [r.rank for r in response.results] == [1, 2, 3, 4, 5]
    raw = [r.rerank_score for r in response.results]
    assert raw == sorted(raw, reverse=True)
    # The scores are the model's own on the candidates' text.
    bm25 = BM25Index.load(built_index).retrieve("cordless drill", 20)
    direct = model.score_products("cordless drill", [c.product for c in bm25])
    best = max(range(len(bm25)), key=lambda i: (direct.raw[i], -int(bm25[i].product.id[1:])))
    assert response.results[0].product_id == bm25[best].product.id
    assert response.results[0].retrieval_rank == bm25[best].rank
    t = response.timings
    assert t.total_ms >= t.retrieve_ms and t.rerank_ms >= 0


def test_results_are_frozen_and_serialisable(built_index):
    response = SearchPipeline(BM25Index.load(built_index)).search("hose")
    r = response.results[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.rank = 3
    with pytest.raises(TypeError):
        r.fields["brand"] = "x"
    assert response.to_dict()["results"][0]["product_id"] == r.product_id
    assert not response.reranked and r.rerank_score is None


def test_rerank_ties_break_by_product_id(built_index, tiny_model):
    # p026 and p027 have identical text, so identical model scores: p026 must come first.
    response = SearchPipeline(BM25Index.load(built_index), CrossEncoder(tiny_model)).search(
        "twin garden hose nozzle", n=30
    )
    ids = [r.product_id for r in response.results]
    assert ids.index("p026") + 1 == ids.index("p027")


@pytest.mark.parametrize("query", ["", "   ", "\n\t"])
def test_empty_query_is_an_error(built_index, query):
    with pytest.raises(QueryError, match="query is empty"):
        SearchPipeline(BM25Index.load(built_index)).search(query)


def test_no_match_gives_empty_results(built_index, tiny_model):
    response = SearchPipeline(BM25Index.load(built_index), CrossEncoder(tiny_model)).search("zebra")
    assert response.results == () and not response.reranked


def test_search_path_never_imports_torch(built_index, tiny_model):
    code = textwrap.dedent(f"""
        import sys
        from reranker.cli import main
        from click.testing import CliRunner
        r = CliRunner().invoke(main, ["search", "cordless drill",
                                       "--index-dir", {str(built_index)!r},
                                       "--model", {str(tiny_model)!r}])
        assert r.exit_code == 0, r.output
        bad = [m for m in ("torch", "transformers", "sentence_transformers", "reranker.training")
               if m in sys.modules]
        assert not bad, bad
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_source_checkout_imports_subpackages_without_an_install(tmp_path):
    """Python started in the checkout (cwd first on sys.path) must find reranker.index too."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = textwrap.dedent(f"""
        import sys
        finders = sys.meta_path
        finders[:] = [f for f in finders if "Editable" not in getattr(f, "__name__", "")]
        sys.path.insert(0, {str(root)!r})
        import reranker.index, reranker.training.data
        assert reranker.index.__file__.startswith({str(root / "index")!r}), reranker.index.__file__
    """)
    env = dict(os.environ, PYTHONPATH="")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)


def test_index_with_stored_token_ids_gives_the_same_search(tmp_path, catalog_csv, tiny_model):
    from reranker.index.build import index_catalog

    model = CrossEncoder(tiny_model, variant="fp32")
    index_catalog(catalog_csv, tmp_path / "with", model=model)
    index_catalog(catalog_csv, tmp_path / "without")
    with_ids = BM25Index.load(tmp_path / "with")
    assert with_ids.tokens_for(model.token_key) is not None
    assert BM25Index.load(tmp_path / "without").tokens_for(model.token_key) is None
    fast = SearchPipeline(with_ids, model, k=20, n=20)
    slow = SearchPipeline(BM25Index.load(tmp_path / "without"), model, k=20, n=20)
    assert fast.product_tokens is not None and slow.product_tokens is None
    for q in ("cordless drill", "garden hose", "white toilet seat"):
        a, b = fast.search(q), slow.search(q)
        assert [r.product_id for r in a.results] == [r.product_id for r in b.results]
        assert [r.rerank_score for r in a.results] == pytest.approx(
            [r.rerank_score for r in b.results], abs=1e-6
        )


def test_token_ids_of_another_model_are_not_used(tmp_path, catalog_csv, tiny_model):
    import json

    from reranker.index.build import index_catalog

    other = tmp_path / "other-model"
    import shutil

    shutil.copytree(tiny_model, other)
    cfg = json.loads((other / "reranker.json").read_text())
    cfg["fields"] = ["brand"]  # reads different text: its stored ids would differ
    (other / "reranker.json").write_text(json.dumps(cfg))
    index_catalog(catalog_csv, tmp_path / "idx", model=CrossEncoder(other))
    pipeline = SearchPipeline(BM25Index.load(tmp_path / "idx"), CrossEncoder(tiny_model))
    assert pipeline.product_tokens is None
    assert pipeline.search("cordless drill").reranked
