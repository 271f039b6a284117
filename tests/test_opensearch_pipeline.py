"""Reranking inside OpenSearch's own query path: `reranker opensearch-pipeline` against a real
node with ml-commons, k-NN and neural-search (scripts/opensearch.sh installs them) and a real
`reranker serve`. Set RERANKER_SKIP_OPENSEARCH=1 to opt out; otherwise a missing server or
plugin is a failure."""

import http.server
import os
import threading
import time
import uuid

import httpx
import pytest
from click.testing import CliRunner

from reranker.catalog import read_catalog
from reranker.cli import main
from reranker.crossencoder import ModelConfig

if os.environ.get("RERANKER_SKIP_OPENSEARCH") == "1":
    pytest.skip("RERANKER_SKIP_OPENSEARCH=1: OpenSearch tests opted out", allow_module_level=True)

from conftest import free_port, start_serve  # noqa: E402

from reranker.index.opensearch import (  # noqa: E402
    RERANK_TEXT_FIELD,
    ConnectionOptions,
    index_catalog_opensearch,
)
from reranker.index.opensearch_pipeline import (  # noqa: E402
    PipelineSpec,
    pipeline_failures,
    rerank_ext,
    wire,
)

URL = os.environ.get("OPENSEARCH_URL", "http://127.0.0.1:9200")
QUERY = "cordless drill"
BODY = {"query": {"multi_match": {"query": QUERY, "fields": ["title^2", "all_text"]}}}


@pytest.fixture(scope="module")
def options():
    opts = ConnectionOptions(URL, timeout=30, retries=1)
    try:
        plugins = {p["component"] for p in opts.client().cat.plugins(format="json")}
    except Exception as exc:
        pytest.fail(
            f"no OpenSearch at {URL} ({exc.__class__.__name__}): scripts/opensearch.sh start"
        )
    missing = {"opensearch-ml", "opensearch-neural-search"} - plugins
    assert not missing, f"the node lacks {missing}: scripts/opensearch.sh installs them"
    return opts


@pytest.fixture
def alias(options, catalog_csv, tiny_model):
    name = f"test-pipe-{uuid.uuid4().hex[:8]}"
    fields = ModelConfig.read(tiny_model).fields
    index_catalog_opensearch(read_catalog(catalog_csv), options, name, rerank_fields=fields)
    yield name
    options.client().indices.delete(index=f"{name}-*", ignore_unavailable=True)


def cleanup(options, report):
    client = options.client()
    for method, path in (
        ("DELETE", f"/_search/pipeline/{report.pipeline}"),
        ("POST", f"/_plugins/_ml/models/{report.model_id}/_undeploy"),
        ("DELETE", f"/_plugins/_ml/models/{report.model_id}"),
        ("DELETE", f"/_plugins/_ml/connectors/{report.connector_id}"),
    ):
        try:
            client.transport.perform_request(method, path)
        except Exception:
            pass


def hits(options, alias, size, pipeline=None, ext=True):
    body = {**BODY, "size": size, **({"ext": rerank_ext(QUERY)} if ext else {})}
    params = {"search_pipeline": pipeline} if pipeline else {"search_pipeline": "_none"}
    t0 = time.perf_counter()
    res = options.client().search(index=alias, body=body, params=params)
    return res["hits"]["hits"], time.perf_counter() - t0


def test_search_pipeline_reranks_like_the_service(options, alias, tiny_model):
    proc, url = start_serve("--no-index", "--model", str(tiny_model))
    name = f"kd-test-{uuid.uuid4().hex[:6]}"
    args = [
        "opensearch-pipeline",
        name,
        "--url",
        URL,
        "--service-url",
        url,
        "--window",
        "3",
        "--index",
        alias,
        "--set-default",
    ]
    try:
        first = CliRunner().invoke(main, args)
        assert first.exit_code == 0, first.output
        assert "connector" in first.output and "registered and deployed" in first.output
        again = CliRunner().invoke(main, args)  # idempotent: nothing new
        assert again.exit_code == 0, again.output
        assert "created" not in again.output and "registered" not in again.output
        report = wire(PipelineSpec(name, url, window=3), options)
        assert report.actions == [f"search pipeline {name} written"]

        window, _ = hits(options, alias, 12)  # BM25's top 3 x 4: what the pipeline reranks
        texts = [h["_source"][RERANK_TEXT_FIELD] for h in window]
        assert all(texts)
        answer = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": texts}).json()
        expected = [window[r["index"]]["_id"] for r in answer["results"]][:4]

        for pipeline in (name, None):  # named, and the index's default (--set-default)
            body = {**BODY, "size": 4, "ext": rerank_ext(QUERY)}
            params = {"search_pipeline": pipeline} if pipeline else {}
            res = options.client().search(index=alias, body=body, params=params)
            got = [h["_id"] for h in res["hits"]["hits"]]
            assert got == expected
        assert expected != [h["_id"] for h in window[:4]]  # the model did change the order
        assert pipeline_failures(options, name) == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        cleanup(options, wire(PipelineSpec(name, url, window=3), options, dry_run=True))


class _Slow(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the standard library's name
        time.sleep(3)
        try:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"results": []}')
        except OSError:  # OpenSearch gave up after its 1 s timeout and closed the connection
            pass

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("failure", ["down", "slow"])
def test_search_keeps_answering_in_bm25_order_when_the_service_fails(options, alias, failure):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = None
    if failure == "slow":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Slow)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    name = f"kd-test-{uuid.uuid4().hex[:6]}"
    report = wire(PipelineSpec(name, url, window=3, timeout_s=1), options)
    try:
        bm25, _ = hits(options, alias, 4)
        before = pipeline_failures(options, name)
        got, seconds = hits(options, alias, 4, pipeline=name)
        assert [h["_id"] for h in got] == [h["_id"] for h in bm25]
        assert seconds < 5  # the 1 s connector timeout, not OpenSearch's 30,000 s default
        assert pipeline_failures(options, name) == before + 1  # visible, not silent
    finally:
        if server is not None:
            server.shutdown()
        cleanup(options, report)


def test_dry_run_sends_nothing(options, tiny_model):
    name = f"kd-test-{uuid.uuid4().hex[:6]}"
    result = CliRunner().invoke(
        main,
        [
            "opensearch-pipeline",
            name,
            "--url",
            URL,
            "--service-url",
            "http://127.0.0.1:9",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "POST /_plugins/_ml/connectors/_create" in result.output
    assert f"PUT /_search/pipeline/{name}" in result.output
    assert '"read_timeout": 1' in result.output
    from opensearchpy.exceptions import NotFoundError

    with pytest.raises(NotFoundError):
        options.client().transport.perform_request("GET", f"/_search/pipeline/{name}")


def test_bad_service_url_is_one_line():
    result = CliRunner().invoke(main, ["opensearch-pipeline", "x", "--service-url", "localhost"])
    assert result.exit_code == 1 and "not a service URL" in result.output
