import asyncio
import json
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from reranker import BM25Index, CrossEncoder, RetrieverUnavailableError
from reranker.serve import ServiceSettings, create_app

DOCS = ["Cordless Drill", "Garden Hose 50 ft.", "Toilet Seat", "Drill Bit Set", "LED Bulb"]


class SlowModel:
    """Delegates to a real model after a delay; records each batch's size."""

    def __init__(self, model, delay=0.0, fail=False):
        self.model, self.delay, self.fail = model, delay, fail
        self.config, self.name = model.config, model.name
        self.batches = []

    def _activate(self, raw):
        return self.model._activate(raw)

    def score_pairs(self, queries, texts):
        self.batches.append(len(set(queries)))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("onnxruntime exploded")
        return self.model.score_pairs(queries, texts)


@pytest.fixture(scope="module")
def model(tiny_model):
    return CrossEncoder(tiny_model, variant="fp32")


def client(model=None, retriever=None, **settings):
    return TestClient(create_app(model, retriever, ServiceSettings(**settings)))


def test_rerank_shape_follows_the_common_rerank_apis(model):
    with client(model) as c:
        r = c.post(
            "/rerank",
            json={
                "query": "cordless drill",
                "documents": DOCS,
                "top_n": 3,
                "return_documents": True,
            },
        )
    assert r.status_code == 200
    body = r.json()
    assert body["reranked"] is True and body["model"] == "tiny-test-model"
    assert len(body["results"]) == 3 and set(body["timings"]) == {"rerank_ms", "total_ms"}
    raw = model.score("cordless drill", DOCS).raw
    assert [x["index"] for x in body["results"]] == list(np.argsort(-raw, kind="stable")[:3])
    for x in body["results"]:
        assert x["document"] == DOCS[x["index"]]
        assert x["relevance_score"] == pytest.approx(1 / (1 + np.exp(-raw[x["index"]])), rel=1e-5)


def test_object_documents_are_read_like_catalog_products(model):
    docs = [
        {"id": "a1", "title": "Cordless Drill", "brand": "Acme", "material": "Steel"},
        {"id": 7, "text": "Garden Hose"},
    ]
    with client(model) as c:
        body = c.post("/rerank", json={"query": "drill", "documents": docs}).json()
    by_index = {x["index"]: x for x in body["results"]}
    assert by_index[0]["id"] == "a1" and by_index[1]["id"] == 7
    expected = model.score("drill", ["Cordless Drill | brand: Acme", "Garden Hose"]).probability
    assert by_index[0]["relevance_score"] == pytest.approx(float(expected[0]), rel=1e-5)


def test_deadline_answers_in_first_stage_order(model):
    slow = SlowModel(model, delay=1.0)
    with client(slow) as c:
        t = time.perf_counter()
        r = c.post("/rerank", json={"query": "drill", "documents": DOCS, "deadline_ms": 50})
        elapsed = time.perf_counter() - t
        metrics = c.get("/metrics").text
    body = r.json()
    assert r.status_code == 200 and body["reranked"] is False
    assert "50 ms deadline" in body["fallback_reason"]
    assert [x["index"] for x in body["results"]] == [0, 1, 2, 3, 4]
    assert all(x["relevance_score"] is None for x in body["results"])
    assert elapsed < 1.0  # answered at the deadline, not when the model finished
    assert 'kd_fallbacks_total{reason="deadline"} 1.0' in metrics


def test_failing_model_is_a_fallback_not_a_5xx(model):
    with client(SlowModel(model, fail=True)) as c:
        r = c.post("/rerank", json={"query": "drill", "documents": DOCS})
        assert r.status_code == 200 and r.json()["reranked"] is False
        assert "onnxruntime exploded" in r.json()["fallback_reason"]
        assert 'kd_fallbacks_total{reason="model_error"} 1.0' in c.get("/metrics").text
        # the worker survives
        assert c.post("/rerank", json={"query": "x", "documents": ["a"]}).status_code == 200


def test_no_model_loaded(model):
    with client(None) as c:
        body = c.post("/rerank", json={"query": "drill", "documents": DOCS}).json()
    assert body["reranked"] is False and body["fallback_reason"] == "no model is loaded"


@pytest.mark.parametrize(
    "payload,status,fragment",
    [
        ({"query": "x", "documents": ["d"] * 11}, 413, "max_documents=10"),
        (
            {"query": "x", "documents": ["d" * 101]},
            413,
            "documents[0].document has 101 characters; the limit is max_field_chars=100",
        ),
        ({"query": "x", "documents": [{"id": 1, "title": "t" * 101}]}, 413, "max_field_chars=100"),
        ({"query": "   ", "documents": ["d"]}, 422, "query is empty"),
        ({"query": "q" * 51, "documents": ["d"]}, 422, "max_query_chars=50"),
        ({"query": "x", "documents": [{"id": 1}]}, 422, "needs a 'text' or a 'title'"),
        ({"query": "x", "documents": [{"title": "a", "brand": {"x": 1}}]}, 422, "must be a string"),
        ({"query": "x", "documents": "not a list"}, 422, "documents"),
        ({"query": 5, "documents": ["d"]}, 422, "query"),
        ({"documents": ["d"]}, 422, "query"),
        ({"query": "x", "documents": ["d"], "top_n": 0}, 422, "top_n"),
        ({"query": "x", "documents": ["d"], "surprise": 1}, 422, "surprise"),
    ],
)
def test_limits_and_bad_requests_name_the_problem(model, payload, status, fragment):
    with client(model, max_documents=10, max_field_chars=100, max_query_chars=50) as c:
        r = c.post("/rerank", json=payload)
    assert r.status_code == status, r.text
    assert fragment in json.dumps(r.json())


def test_body_size_limit_and_malformed_json(model):
    with client(model, max_body_bytes=1000) as c:
        big = c.post("/rerank", json={"query": "x", "documents": ["d" * 50] * 40})
        assert big.status_code == 413 and "max_body_bytes=1000" in big.json()["detail"]
        bad = c.post(
            "/rerank",
            content=b'{"query": "x", "documents": [',
            headers={"content-type": "application/json"},
        )
        assert bad.status_code == 422


def test_search_endpoint_with_comparison(model, built_index):
    with client(model, BM25Index.load(built_index)) as c:
        r = c.post("/search", json={"query": "cordless drill", "k": 20, "n": 5, "compare": True})
        body = r.json()
        assert r.status_code == 200 and body["reranked"] is True
        assert [x["rank"] for x in body["results"]] == [1, 2, 3, 4, 5]
        assert [x["retrieval_rank"] for x in body["first_stage"]] == [1, 2, 3, 4, 5]
        assert set(body["timings"]) == {"retrieve_ms", "rerank_ms", "total_ms"}
        assert body["corrected"] == {}
        misspelt = c.post("/search", json={"query": "cordles dril", "k": 20, "n": 5}).json()
        assert misspelt["corrected"] == {"cordles": "cordless", "dril": "drill"}
        assert misspelt["results"][0]["product_id"] == body["results"][0]["product_id"]
        assert c.post("/search", json={"query": ""}).status_code == 422


def test_search_without_index_and_with_a_broken_first_stage(model):
    class Down:
        def prepare(self):  # at start: the service starts anyway, the first search tells
            raise RetrieverUnavailableError("OpenSearch at http://x:9200 is unreachable")

        def retrieve(self, query, k):
            raise RetrieverUnavailableError("OpenSearch at http://x:9200 is unreachable")

    with client(model) as c:
        assert c.post("/search", json={"query": "drill"}).status_code == 404
    with client(model, Down()) as c:
        r = c.post("/search", json={"query": "drill"})
        assert r.status_code == 503 and "unreachable" in r.json()["detail"]


def test_health_metrics_openapi_and_demo_page(model):
    with client(model) as c:
        c.post("/rerank", json={"query": "drill", "documents": DOCS})
        assert c.get("/healthz").json()["model"] == "tiny-test-model"
        metrics = c.get("/metrics").text
        for name in (
            "kd_requests_total",
            "kd_stage_seconds_bucket",
            "kd_batch_pairs_bucket",
            "kd_model_loaded 1.0",
            "kd_model_load_seconds",
        ):
            assert name in metrics
        assert 'kd_requests_total{endpoint="/rerank",status="200"}' in metrics
        schema = c.get("/openapi.json").json()
        assert {"/rerank", "/search", "/healthz"} <= set(schema["paths"])
        page = c.get("/")
        assert page.status_code == 200 and '<input type="search"' in page.text


def test_concurrent_requests_are_batched_together(model):
    slow = SlowModel(model, delay=0.05)
    app = create_app(slow, None, ServiceSettings(batch_wait_ms=20))

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(
                *[
                    c.post("/rerank", json={"query": f"drill {i}", "documents": DOCS})
                    for i in range(16)
                ]
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 and r.json()["reranked"] for r in responses)
    assert max(slow.batches) > 1  # several requests scored in one model call
    assert sum(slow.batches) == 16


def test_reranker_serve_binds_loopback_and_answers(serve_process):
    url, proc = serve_process
    assert url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{url}/healthz", timeout=5).json()["status"] == "ok"
    r = httpx.post(f"{url}/search", json={"query": "garden hose"}, timeout=10)
    assert r.json()["reranked"] is True
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    assert f"serving on {url}" in err


def test_deadline_reranks_as_many_as_fit_and_keeps_the_rest_in_order(tiny_model):
    model = CrossEncoder(tiny_model, variant="fp32")
    app = create_app(model, None, ServiceSettings(deadline_ms=500))
    # freeze the learnt cost: 100 ms a pair leaves room for 0.8 * 500 / 100 = 4 documents
    model.latency.fixed_ms, model.latency.per_pair_ms, model.latency.alpha = 0.0, 100.0, 0.0
    docs = DOCS + ["Hammer", "Saw"]
    with TestClient(app) as c:
        body = c.post("/rerank", json={"query": "cordless drill", "documents": docs}).json()
        assert body["reranked"] is True and body["reranked_k"] in (3, 4)
        k = body["reranked_k"]
        order = [x["index"] for x in body["results"]]
        assert sorted(order[:k]) == list(range(k)) and order[k:] == list(range(k, len(docs)))
        assert all(x.get("relevance_score") is None for x in body["results"][k:])
        raw = model.score("cordless drill", docs[:k]).raw
        assert order[:k] == list(np.argsort(-raw, kind="stable"))
        tight = c.post("/rerank", json={"query": "drill", "documents": docs, "deadline_ms": 50})
        assert tight.json()["reranked"] is False  # no document fits: first-stage order
        assert "no candidate could be scored within the 50 ms deadline" in tight.text
    with client(model, deadline_ms=500, adaptive=False) as c:
        body = c.post("/rerank", json={"query": "cordless drill", "documents": docs}).json()
        assert body["reranked_k"] == len(docs)


def test_search_uses_product_token_ids_stored_with_the_index(tmp_path, catalog_csv, tiny_model):
    from reranker.index.build import index_catalog

    model = CrossEncoder(tiny_model, variant="fp32")
    index_catalog(catalog_csv, tmp_path / "idx", model=model)
    index = BM25Index.load(tmp_path / "idx")
    with client(model, index, k=20, n=20) as c:
        body = c.post("/search", json={"query": "cordless drill"}).json()
    assert body["reranked"] and body["reranked_k"] == body["candidates"]
    cands = index.retrieve("cordless drill", 20)
    raw = model.score_products("cordless drill", [c.product for c in cands]).raw
    by_id = {c.product.id: float(s) for c, s in zip(cands, raw, strict=True)}
    for r in body["results"]:
        assert r["rerank_score"] == pytest.approx(by_id[r["product_id"]], abs=1e-5)
