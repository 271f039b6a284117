import json
import re
from pathlib import Path

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from reranker.catalog import read_catalog
from reranker.errors import IndexCorruptError, IndexExistsError, IndexNotFoundError
from reranker.index import BM25Index, Retriever, store
from reranker.index.build import index_catalog
from reranker.text import searchable_text

DATA = Path(__file__).parent / "data"


def test_golden_ids_and_scores_match_rank_bm25(built_index):
    """Exact ids and float64 scores of rank-bm25's BM25Okapi (checked-in golden file)."""
    golden = json.loads((DATA / "golden_bm25.json").read_text())
    index = BM25Index.load(built_index)
    for query, expected in golden.items():
        got = [[c.product.id, c.score] for c in index.retrieve(query, k=10)]
        assert got == expected, query


def test_every_score_equals_bm25okapi_on_the_same_tokens(built_index, catalog_csv):
    index = BM25Index.load(built_index)
    catalog = read_catalog(catalog_csv)
    tok = index.tokenizer
    corpus = [tok(searchable_text(p.title, p.fields)) for p in catalog.products]
    ref = BM25Okapi(corpus, k1=index.params["k1"], b=index.params["b"])
    for q in ["cordless drill drill", "white", "hose reel cart wheels", "1 gal", "nothing here"]:
        assert np.array_equal(index.scores(q), ref.get_scores(tok(q))), q


def test_retriever_contract_ranks_and_ties(built_index):
    index = BM25Index.load(built_index)
    assert isinstance(index, Retriever)
    hits = index.retrieve("twin garden hose", k=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert [h.product.id for h in hits[:2]] == ["p026", "p027"]  # same score: id ascending
    assert hits[0].score == hits[1].score
    assert index.retrieve("zebra", k=10) == []
    assert index.retrieve("", k=10) == []
    assert len(index.retrieve("drill", k=100)) == 6  # only products containing a query term


def test_manifest_records_count_checksum_tokenizer_and_version(built_index, catalog_csv):
    gen, manifest = store.open_current(built_index)
    assert manifest["format_version"] == 1
    assert manifest["count"] == 30
    assert manifest["catalog"]["sha256"] == read_catalog(catalog_csv).sha256
    assert manifest["tokenizer"] == {
        "pattern": "[a-z]+|[0-9]+",
        "lowercase": True,
        "stemmer": "english",
    }
    assert (manifest["bm25"]["k1"], manifest["bm25"]["b"]) == (0.3, 0.4)
    assert "rank-bm25" in manifest["bm25"]["implementation"]
    assert not list(gen.glob("*.pkl")) and not list(gen.glob("*.pickle"))


def test_existing_index_needs_overwrite(index_dir, catalog_csv):
    with pytest.raises(IndexExistsError, match="--overwrite"):
        index_catalog(catalog_csv, index_dir)
    index_catalog(catalog_csv, index_dir, overwrite=True)
    assert len(BM25Index.load(index_dir)) == 30
    assert len([p for p in index_dir.iterdir() if p.name.startswith("gen-")]) == 1


@pytest.mark.parametrize("interrupt", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_write_leaves_previous_index_usable(
    index_dir, tmp_path, monkeypatch, interrupt
):
    before = [c.product.id for c in BM25Index.load(index_dir).retrieve("drill", 5)]
    small = tmp_path / "small.csv"
    small.write_text("product_id,title\nx1,Drill press\n")
    real_save = np.save
    calls = {"n": 0}

    def failing_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise interrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(type(interrupt)):
        index_catalog(small, index_dir, overwrite=True)
    monkeypatch.undo()
    after = BM25Index.load(index_dir)
    assert len(after) == 30
    assert [c.product.id for c in after.retrieve("drill", 5)] == before
    assert len([p for p in index_dir.iterdir() if p.name.startswith("gen-")]) == 1


def test_missing_index(tmp_path):
    with pytest.raises(IndexNotFoundError, match=r"no index at .*reranker index CATALOG"):
        BM25Index.load(tmp_path / "none")


def test_corrupt_file_is_detected(index_dir):
    gen, _ = store.open_current(index_dir)
    data = bytearray((gen / "postings_weight.npy").read_bytes())
    data[-1] ^= 0xFF
    (gen / "postings_weight.npy").write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="postings_weight.npy does not match its checksum"):
        BM25Index.load(index_dir)


def test_missing_file_and_dangling_pointer(index_dir):
    gen, _ = store.open_current(index_dir)
    (gen / "vocab.json").unlink()
    with pytest.raises(IndexCorruptError, match="vocab.json is missing"):
        BM25Index.load(index_dir)
    (index_dir / "CURRENT").write_text("gen-nope\n")
    with pytest.raises(IndexCorruptError, match="missing generation"):
        BM25Index.load(index_dir)


def test_format_version_mismatch(index_dir):
    gen, manifest = store.open_current(index_dir)
    manifest["format_version"] = 99
    (gen / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match=r"format version 99.*rebuild"):
        BM25Index.load(index_dir)


def test_pickled_array_is_refused_not_executed(index_dir):
    gen, manifest = store.open_current(index_dir)
    np.save(gen / "id_rank.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(IndexCorruptError, match="corrupt"):
        BM25Index.load(index_dir, verify=False)


def test_long_query_is_capped(built_index):
    index = BM25Index.load(built_index)
    hits = index.retrieve(" ".join(["drill"] * 10_000), k=3)
    assert hits and hits[0].product.id.startswith("p")
    assert re.fullmatch(r"p\d{3}", hits[0].product.id)
