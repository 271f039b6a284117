"""The rerank dialects users' clients speak: Cohere v1/v2 (the real `cohere` SDK), Jina's body,
Hugging Face TEI's body; each answers in its own shape, errors included."""

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from reranker import CrossEncoder
from reranker.serve import ServiceSettings, create_app

cohere = pytest.importorskip("cohere", reason="the [dev] extra installs the cohere SDK")

DOCS = ["Cordless Drill", "Garden Hose 50 ft.", "Toilet Seat", "Drill Bit Set", "LED Bulb"]


@pytest.fixture(scope="module")
def model(tiny_model):
    return CrossEncoder(tiny_model, variant="fp32")


def expected_order(model, query, docs):
    return list(np.argsort(-model.score(query, docs).raw, kind="stable"))


class SlowModel:
    def __init__(self, model, delay):
        self.model, self.delay = model, delay
        self.config, self.name = model.config, model.name

    def _activate(self, raw):
        return self.model._activate(raw)

    def score_pairs(self, queries, texts):
        time.sleep(self.delay)
        return self.model.score_pairs(queries, texts)


def client(model=None, **settings):
    return TestClient(create_app(model, None, ServiceSettings(**settings)))


def test_cohere_sdk_clients_against_a_real_server(serve_process, tiny_model):
    """`cohere.Client` (POST /v1/rerank) and `cohere.ClientV2` (POST /v2/rerank), unchanged,
    pointed at `reranker serve`."""
    url, _ = serve_process
    model = CrossEncoder(tiny_model, variant="fp32")
    order = expected_order(model, "cordless drill", DOCS)
    v1 = cohere.Client(api_key="unused", base_url=url)
    r1 = v1.rerank(query="cordless drill", documents=DOCS, top_n=3, return_documents=True)
    assert [r.index for r in r1.results] == order[:3]
    assert [r.document.text for r in r1.results] == [DOCS[i] for i in order[:3]]
    assert r1.meta.api_version.version == "1" and r1.id
    v2 = cohere.ClientV2(api_key="unused", base_url=url)
    r2 = v2.rerank(model="default", query="cordless drill", documents=DOCS, max_tokens_per_doc=64)
    assert [r.index for r in r2.results] == order
    scores = [r.relevance_score for r in r2.results]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    with pytest.raises(cohere.errors.BadRequestError) as err:
        v2.rerank(model="default", query="  ", documents=DOCS)
    assert "query is empty" in err.value.body["message"]


@pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
def test_cohere_sdk_through_the_app(model):
    with client(model) as c:
        v1 = cohere.Client(api_key="unused", base_url=str(c.base_url), httpx_client=c)
        docs = [{"text": "Garden Hose"}, {"text": "Cordless Drill", "sku": "42"}]
        r = v1.rerank(query="drill", documents=docs, return_documents=True)
    assert [x.index for x in r.results] == expected_order(model, "drill", [d["text"] for d in docs])
    by_index = {x.index: x for x in r.results}
    assert by_index[1].document.text == "Cordless Drill"  # other fields are kept, as Cohere does
    assert by_index[1].document.sku == "42"


def test_cohere_body_as_opensearch_and_jina_send_it(model):
    """OpenSearch's Cohere connector sends every hit as a string with top_n = their count and
    needs a score for each; Jina's API sends {text} objects to /v1/rerank."""
    with client(model) as c:
        body = c.post(
            "/v1/rerank",
            json={"query": "drill", "documents": DOCS, "top_n": len(DOCS)},
        ).json()
        jina = c.post(
            "/v1/rerank",
            json={
                "model": "jina-reranker-v2-base-multilingual",
                "query": "drill",
                "documents": [{"text": d} for d in DOCS],
                "top_n": 2,
                "return_documents": True,
            },
        ).json()
    assert sorted(r["index"] for r in body["results"]) == list(range(len(DOCS)))
    assert "warnings" not in body["meta"]
    assert [r["index"] for r in jina["results"]] == expected_order(model, "drill", DOCS)[:2]
    assert jina["results"][0]["document"] == {"text": DOCS[jina["results"][0]["index"]]}


def test_cohere_fallback_scores_every_document_in_the_order_given(model):
    with client(SlowModel(model, 1.0), deadline_ms=50, adaptive=False) as c:
        r = c.post("/v2/rerank", json={"model": "m", "query": "drill", "documents": DOCS})
        metrics = c.get("/metrics").text
    assert r.status_code == 200 and r.headers["x-reranked"] == "false"
    body = r.json()
    assert [x["index"] for x in body["results"]] == list(range(len(DOCS)))
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(DOCS)
    assert "not reranked" in body["meta"]["warnings"][0]
    assert 'kd_fallbacks_total{reason="deadline"} 1.0' in metrics


@pytest.mark.parametrize(
    ("path", "payload", "status", "fragment"),
    [
        ("/v1/rerank", {"query": "x"}, 400, "documents"),
        ("/v1/rerank", {"query": "x", "documents": []}, 400, "must not be empty"),
        ("/v2/rerank", {"query": "x", "documents": ["a"], "top_n": 0}, 400, "top_n"),
        ("/v2/rerank", {"query": "x", "documents": [{"title": ["a"]}]}, 400, "documents"),
        ("/v2/rerank", {"query": "x", "documents": ["a"] * 11}, 413, "max_documents=10"),
        ("/v1/rerank", [1, 2], 400, "JSON object"),
    ],
)
def test_cohere_errors_in_cohere_shape(model, path, payload, status, fragment):
    with client(model, max_documents=10) as c:
        r = c.post(path, json=payload) if payload != [1, 2] else c.post(path, json=[1, 2])
    assert r.status_code == status
    assert fragment in r.json()["message"]


def test_cohere_malformed_json_and_rank_fields(model):
    with client(model) as c:
        bad = c.post(
            "/v1/rerank", content=b"{not json", headers={"content-type": "application/json"}
        )
        ranked = c.post(
            "/v1/rerank",
            json={
                "query": "drill",
                "documents": [{"title": "Cordless Drill", "brand": "Acme", "note": "x"}],
                "rank_fields": ["title", "brand"],
            },
        )
        missing = c.post(
            "/v1/rerank",
            json={"query": "drill", "documents": [{"title": "a"}], "rank_fields": ["color"]},
        )
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["message"]
    expected = model.score("drill", ["Cordless Drill | brand: Acme"]).probability[0]
    assert ranked.json()["results"][0]["relevance_score"] == pytest.approx(
        float(expected), rel=1e-5
    )
    assert missing.status_code == 400 and "color" in missing.json()["message"]


def test_tei_body_on_rerank_answers_in_tei_shape(model):
    with client(model) as c:
        r = c.post(
            "/rerank",
            json={"query": "drill", "texts": DOCS, "return_text": True, "truncate": True},
        )
        raw = c.post("/rerank", json={"query": "drill", "texts": DOCS, "raw_scores": True})
        native = c.post("/rerank", json={"query": "drill", "documents": DOCS})
    assert r.status_code == 200 and r.headers["x-reranked"] == "true"
    body = r.json()
    assert isinstance(body, list)
    assert [x["index"] for x in body] == expected_order(model, "drill", DOCS)
    assert all(x["text"] == DOCS[x["index"]] for x in body)
    logits = model.score("drill", DOCS).raw
    assert {x["index"]: x["score"] for x in raw.json()} == pytest.approx(
        {i: float(v) for i, v in enumerate(logits)}, rel=1e-5
    )
    assert "results" in native.json()  # the native body still gets the native answer


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"query": "", "texts": ["a"]}, 422, "query is empty"),
        ({"query": "x", "texts": []}, 422, "cannot be empty"),
        ({"query": "x", "texts": [1]}, 422, "texts"),
        ({"query": "x", "texts": ["a"] * 11}, 413, "max_documents=10"),
        ({"query": "x", "texts": ["a" * 50]}, 413, "max_field_chars=20"),
    ],
)
def test_tei_errors_in_tei_shape(model, payload, status, fragment):
    with client(model, max_documents=10, max_field_chars=20) as c:
        r = c.post("/rerank", json=payload)
    assert r.status_code == status
    body = r.json()
    assert body["error_type"] == "Validation" and fragment in body["error"]


def test_tei_without_a_model_keeps_the_order_and_says_so():
    with client(None) as c:
        r = c.post("/rerank", json={"query": "drill", "texts": DOCS})
    assert r.status_code == 200 and r.headers["x-reranked"] == "false"
    assert "no model" in r.headers["x-rerank-fallback"]
    assert [x["index"] for x in r.json()] == list(range(len(DOCS)))


def test_body_limit_speaks_each_dialect(model):
    with client(model, max_body_bytes=200) as c:
        big = {"query": "x", "documents": ["y" * 300]}
        cohere_r = c.post("/v2/rerank", json=big)
        native_r = c.post("/rerank", json=big)
    assert cohere_r.status_code == 413 and "max_body_bytes=200" in cohere_r.json()["message"]
    assert native_r.status_code == 413 and "max_body_bytes=200" in native_r.json()["detail"]
    assert native_r.json()["error_type"] == "Validation"  # a TEI client reads the same answer


def test_openapi_lists_every_dialect(model):
    with client(model) as c:
        paths = c.get("/openapi.json").json()["paths"]
    assert {"/rerank", "/v1/rerank", "/v2/rerank", "/search"} <= set(paths)
