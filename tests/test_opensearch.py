"""Against a real OpenSearch node (scripts/opensearch.sh; scripts/test.sh starts one).

Set RERANKER_SKIP_OPENSEARCH=1 to opt out explicitly; otherwise a missing server is a failure.
"""

import json
import os
import socket
import threading
import uuid

import pytest
from click.testing import CliRunner

from reranker import CrossEncoder, IndexExistsError, RetrieverUnavailableError, SearchPipeline
from reranker.catalog import read_catalog
from reranker.cli import main
from reranker.text import BM25Tokenizer

if os.environ.get("RERANKER_SKIP_OPENSEARCH") == "1":
    pytest.skip("RERANKER_SKIP_OPENSEARCH=1: OpenSearch tests opted out", allow_module_level=True)

from reranker.index.opensearch import (  # noqa: E402
    BulkIndexError,
    ConnectionOptions,
    OpenSearchRetriever,
    document,
    index_catalog_opensearch,
)

URL = os.environ.get("OPENSEARCH_URL", "http://127.0.0.1:9200")


@pytest.fixture(scope="module")
def options():
    opts = ConnectionOptions(URL, timeout=20, retries=1)
    try:
        opts.client().cluster.health(wait_for_status="yellow", request_timeout=30)
    except Exception as exc:
        pytest.fail(
            f"no OpenSearch at {URL} ({exc.__class__.__name__}); start one with "
            "`scripts/opensearch.sh start` or opt out with RERANKER_SKIP_OPENSEARCH=1"
        )
    return opts


@pytest.fixture
def name(options):
    alias = f"test-{uuid.uuid4().hex[:8]}"
    yield alias
    client = options.client()
    client.indices.delete(index=f"{alias}-*", ignore_unavailable=True)


@pytest.fixture(scope="module")
def catalog(catalog_csv):
    return read_catalog(catalog_csv)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], env={"RERANKER_MODEL": ""})


def test_index_and_search_round_trip_through_the_cli(options, name, catalog_csv, tmp_path):
    r = cli(
        "index",
        catalog_csv,
        "--backend",
        "opensearch",
        "--url",
        URL,
        "--index",
        name,
        "-q",
        "--index-dir",
        tmp_path / "states",
    )
    assert r.exit_code == 0, r.output
    assert "indexed 30 products, skipped 0, failed 0" in r.output
    # with the shipped late student: its model text in OpenSearch, its states on disk
    assert "model text in rerank_text" in r.output
    assert f"reranker serve --product-states {tmp_path / 'states'}" in r.output
    hit = options.client().search(index=name, body={"size": 1})["hits"]["hits"][0]
    from reranker.models import open_model
    from reranker.pipeline import PACKAGED_MODEL_DIR

    shipped_fields = open_model(PACKAGED_MODEL_DIR).config.fields  # () : the title alone
    product = {p.id: p for p in read_catalog(catalog_csv).products}[hit["_id"]]
    assert hit["_source"]["rerank_text"] == product.text(shipped_fields)
    # the attributes the students do not read are still searchable fields of the document
    assert hit["_source"]["attributes"] == dict(product.fields)
    r = cli(
        "search",
        "twin garden hose",
        "--backend",
        "opensearch",
        "--url",
        URL,
        "--index",
        name,
        "--no-rerank",
        "--json",
        "-n",
        "3",
    )
    assert r.exit_code == 0, r.output
    ids = [x["product_id"] for x in json.loads(r.output)["results"]]
    assert ids[:2] == ["p026", "p027"]  # identical products: ties break by id


def test_reindex_needs_overwrite_and_swaps_the_alias_atomically(options, name, catalog):
    first = index_catalog_opensearch(catalog, options, name)
    with pytest.raises(IndexExistsError, match="--overwrite"):
        index_catalog_opensearch(catalog, options, name)
    second = index_catalog_opensearch(catalog, options, name, overwrite=True)
    client = options.client()
    assert list(client.indices.get_alias(name=name)) == [second.physical_index]
    assert not client.indices.exists(index=first.physical_index)
    assert len(OpenSearchRetriever(options, name).retrieve("drill", 100)) > 0


def test_mapping_and_analyzer(options, name, catalog):
    report = index_catalog_opensearch(catalog, options, name)
    client = options.client()
    props = client.indices.get_mapping(index=name)[report.physical_index]["mappings"]
    assert props["dynamic"] == "strict"
    p = props["properties"]
    assert p["product_id"]["type"] == "keyword"
    assert p["title"] == {"type": "text", "analyzer": "kd_english", "copy_to": ["all_text"]}
    assert set(p["attributes"]["properties"]) == {"brand", "color", "material"}
    # every field scores with the embedded index's BM25 parameters, not OpenSearch's 1.2 / 0.75
    settings = client.indices.get_settings(index=name)[report.physical_index]["settings"]
    assert settings["index"]["similarity"]["default"] == {"type": "BM25", "k1": "0.3", "b": "0.4"}
    tokens = client.indices.analyze(
        index=name, body={"field": "title", "text": "DEWALT 20-Volt Drills/Driver Seats"}
    )
    # stemmed as the embedded index stems (Snowball English)
    assert [t["token"] for t in tokens["tokens"]] == [
        "dewalt",
        "20",
        "volt",
        "drill",
        "driver",
        "seat",
    ]
    # the embedded index's tokens exactly: numbers apart from units, "60W" as "60 watt" finds it
    text = "60W LED Bulbs, 18V 2x4 3.5 in. Café Baker&#39;s M18"
    tokens = client.indices.analyze(index=name, body={"field": "title", "text": text})
    assert [t["token"] for t in tokens["tokens"]] == BM25Tokenizer()(text)
    assert BM25Tokenizer()(text)[:2] == ["60", "w"]
    retriever = OpenSearchRetriever(options, name)
    assert retriever.attribute_fields == ("brand", "color", "material")
    # misspelt words of 4 letters and more match within an edit or two (fuzziness AUTO:4,7)
    misspelt = [c.product.id for c in retriever.retrieve("gardn hoze", 5)]
    assert misspelt[:3] == [c.product.id for c in retriever.retrieve("garden hose", 3)]
    assert retriever.retrieve("zbra", 5) == []
    exact = OpenSearchRetriever(options, name, fuzzy=False)
    assert exact.retrieve("gardn hoze", 5) == []  # words as typed: no product has either
    hit = retriever.retrieve("toilet seat biscuit", 1)[0]
    assert hit.product.fields == {
        "brand": "American Standard",
        "color": "Biscuit",
        "material": "Wood",
    }


def bad_documents(catalog):
    for p in catalog.products:
        doc = document(p)
        if p.id in ("p003", "p017"):
            doc["attributes"] = {"brand": {"not": "text"}}  # rejected by the mapping
        yield doc


def test_per_document_failures_are_reported_by_id(options, name, catalog):
    with pytest.raises(BulkIndexError, match=r"2 of 30 documents failed.*p003.*p017") as err:
        index_catalog_opensearch(catalog, options, name, documents=bad_documents(catalog))
    assert [pid for pid, _ in err.value.failed] == ["p003", "p017"]
    client = options.client()
    assert not client.indices.exists_alias(name=name)  # nothing published
    assert not client.indices.exists(index=f"{name}-*", allow_no_indices=False)
    report = index_catalog_opensearch(
        catalog, options, name, documents=bad_documents(catalog), allow_failures=True
    )
    assert report.indexed == 28 and [f[0] for f in report.failed] == ["p003", "p017"]
    assert "mapper_parsing_exception" in report.failed[0][1]


@pytest.mark.parametrize(
    "query",
    [
        '"cordless drill',
        "drill}",
        '{"query": {"match_all": {}}}',
        "hose OR seat AND NOT drill",
        "dri*",
        "title:drill",
        "\\",
        "(((",
        "drill " * 5000,
        "ß ✓ 🚿 toilet",
    ],
)
def test_injection_shaped_queries_return_results_or_nothing(options, name, catalog, query):
    index_catalog_opensearch(catalog, options, name)
    hits = OpenSearchRetriever(options, name).retrieve(query, 10)
    assert isinstance(hits, list)
    if query.startswith("{"):  # a query-DSL-looking string is text, not a match_all
        assert len(hits) < 30


def test_options_are_passed_to_the_client():
    opts = ConnectionOptions(
        "https://search.example:9200",
        username="u",
        password="p",
        ca_certs="/etc/ssl/certs/ca-certificates.crt",
        timeout=3,
        retries=4,
    )
    client = opts.client()
    conn = client.transport.get_connection()
    assert conn.use_ssl and conn.headers["authorization"].startswith("Basic ")
    assert conn.pool.ca_certs == "/etc/ssl/certs/ca-certificates.crt"
    assert conn.pool.cert_reqs == "CERT_REQUIRED"  # verification on by default
    assert client.transport.max_retries == 4 and conn.timeout == 3
    off = ConnectionOptions("https://search.example:9200", verify_certs=False).client()
    assert off.transport.get_connection().pool.cert_reqs == "CERT_NONE"


def test_tls_to_a_plain_http_server_is_a_clean_error(options, name, catalog):
    index_catalog_opensearch(catalog, options, name)
    tls = ConnectionOptions(URL.replace("http://", "https://"), retries=0)
    with pytest.raises(
        RetrieverUnavailableError, match=r"TLS failed talking to OpenSearch at https"
    ):
        OpenSearchRetriever(tls, name).retrieve("drill", 5)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_cluster(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RetrieverUnavailableError, match=rf"OpenSearch at {url} is unreachable"):
        OpenSearchRetriever(ConnectionOptions(url, retries=0), "x").retrieve("drill", 5)
    r = cli(
        "search", "drill", "--backend", "opensearch", "--url", url, "--no-rerank", "--retries", "0"
    )
    assert r.exit_code == 1
    assert r.output.count("\n") == 1 and f"OpenSearch at {url} is unreachable" in r.output


def test_slow_cluster_times_out():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    accepted = []
    stop = threading.Event()

    def accept():  # accept connections and never answer
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        with pytest.raises(
            RetrieverUnavailableError, match=rf"OpenSearch at {url} did not answer in time"
        ):
            OpenSearchRetriever(ConnectionOptions(url, timeout=0.5, retries=0), "x").retrieve(
                "a", 5
            )
    finally:
        stop.set()
        thread.join()
        for c in accepted:
            c.close()
        server.close()


def test_red_index_is_a_typed_error(options, name):
    client = options.client()
    physical = f"{name}-red"
    client.indices.create(
        index=physical,
        body={
            "settings": {
                "number_of_shards": 1,
                "number_of_replicas": 0,
                "index.routing.allocation.require._name": "no-such-node",
            }
        },
        params={"wait_for_active_shards": "0"},  # the shard can never start: the index is red
    )
    client.indices.update_aliases(body={"actions": [{"add": {"index": physical, "alias": name}}]})
    with pytest.raises(RetrieverUnavailableError, match=rf"OpenSearch at {URL} answered 503"):
        OpenSearchRetriever(ConnectionOptions(URL, retries=0), name).retrieve("drill", 5)


def test_pipeline_reranks_opensearch_candidates(options, name, catalog, tiny_model):
    index_catalog_opensearch(catalog, options, name)
    pipeline = SearchPipeline(OpenSearchRetriever(options, name), CrossEncoder(tiny_model))
    response = pipeline.search("cordless drill", k=20, n=5)
    assert response.reranked and len(response.results) == 5
    assert {r.retrieval_rank for r in response.results} <= set(range(1, 21))


def _expected_hybrid(options, name, retriever, catalog, embedder, query, floor):
    """The embedded index's fusion (reranker.index.dense), computed here over the whole
    catalog: OpenSearch's BM25 of every product, the embedder's cosine of every product."""

    hits = options.client().search(index=name, body=retriever.query_body(query, 100))
    bm25 = {h["_id"]: h["_score"] for h in hits["hits"]["hits"]}
    top = max(bm25.values(), default=0.0) or 1.0
    vectors = embedder.embed([p.text() for p in catalog.products])
    cosine = vectors @ embedder.embed([query])[0]
    fused = {
        p.id: bm25.get(p.id, 0.0) / top + float(c)
        for p, c in zip(catalog.products, cosine, strict=True)
        if p.id in bm25 or c >= floor
    }
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


@pytest.mark.parametrize("query", ["cordless drill", "toilet seat biscuit", "qqq zzzz"])
def test_hybrid_index_fuses_bm25_and_cosine_as_the_embedded_index(
    options, name, catalog, tiny_embedder, query
):
    from reranker.embedder import TextEmbedder

    embedder = TextEmbedder(tiny_embedder)
    report = index_catalog_opensearch(catalog, options, name, embedder=embedder, min_similarity=0.2)
    client = options.client()
    mapping = client.indices.get_mapping(index=name)[report.physical_index]["mappings"]
    assert mapping["properties"]["embedding"]["type"] == "knn_vector"
    assert mapping["properties"]["embedding"]["dimension"] == embedder.config.dim
    hit = client.search(index=name, body={"size": 1})["hits"]["hits"][0]
    assert "embedding" not in hit["_source"]  # searched, not stored twice
    retriever = OpenSearchRetriever(options, name, embedder_dir=tiny_embedder)
    assert retriever.dense["embedder_key"] == embedder.key()
    assert retriever.dense["min_similarity"] == 0.2 and retriever.dense["weight"] == 1.0
    expected = _expected_hybrid(options, name, retriever, catalog, embedder, query, 0.2)
    got = retriever.retrieve(query, 30)  # every product is in one of the two top 30s
    assert [c.product.id for c in got] == [pid for pid, _ in expected]
    assert [c.score for c in got] == pytest.approx([s for _, s in expected], abs=1e-4)
    assert [c.rank for c in got] == list(range(1, len(got) + 1))
    top3 = retriever.retrieve(query, 3)
    assert len(top3) == min(3, len(expected))
    assert [c.score for c in top3] == sorted((c.score for c in top3), reverse=True)


def test_hybrid_index_needs_the_embedder_it_was_built_with(options, name, catalog, tiny_embedder):
    from reranker.embedder import TextEmbedder

    index_catalog_opensearch(catalog, options, name, embedder=TextEmbedder(tiny_embedder))
    with pytest.raises(RetrieverUnavailableError, match="re-index it"):
        OpenSearchRetriever(options, name).retrieve("drill", 5)  # the shipped embedder: another
    with pytest.raises(RetrieverUnavailableError, match="re-index it"):
        OpenSearchRetriever(options, name).prepare()  # a server finds out at its start
    ready = OpenSearchRetriever(options, name, embedder_dir=tiny_embedder)
    ready.prepare()
    assert ready._embedder is not None


def test_cli_indexes_hybrid_where_the_cluster_has_knn(options, name, catalog_csv, monkeypatch):
    args = ["index", catalog_csv, "--backend", "opensearch", "--url", URL, "--index", name, "-q"]
    r = cli(*args, "--no-tokens")
    assert r.exit_code == 0, r.output
    assert "retrieval is hybrid (BM25 + dense)" in r.output
    hits = OpenSearchRetriever(options, name).retrieve("toliet seat", 3)  # the shipped embedder
    assert hits and all("Toilet" in c.product.title for c in hits[:2])
    r = cli(*args, "--no-tokens", "--overwrite", "--no-dense")
    assert r.exit_code == 0, r.output
    assert "hybrid" not in r.output
    assert OpenSearchRetriever(options, name).dense is None
    r = cli(*args, "--overwrite", "--embedder", "somewhere")
    assert r.exit_code == 2 and "embeds with the embedder shipped" in r.output
    # a cluster without the k-NN plugin: BM25 alone by default (said), an error with --dense
    monkeypatch.setattr("reranker.index.opensearch.has_knn", lambda client, url: False)
    r = cli(*args, "--no-tokens", "--overwrite")
    assert r.exit_code == 0, r.output
    assert "has no k-NN plugin: indexing for BM25 alone" in r.output
    assert OpenSearchRetriever(options, name).dense is None
    r = cli(*args, "--no-tokens", "--overwrite", "--dense")
    assert r.exit_code != 0 and "no k-NN plugin" in r.output


def test_a_retriever_follows_its_alias_to_a_rebuilt_index(
    options, name, catalog, tiny_embedder, monkeypatch
):
    from reranker.embedder import TextEmbedder
    from reranker.index import opensearch

    index_catalog_opensearch(catalog, options, name, embedder=TextEmbedder(tiny_embedder))
    retriever = OpenSearchRetriever(options, name, embedder_dir=tiny_embedder)
    assert retriever.dense is not None and retriever.retrieve("drill", 5)
    index_catalog_opensearch(catalog, options, name, overwrite=True)  # BM25 alone now
    assert retriever.dense is not None  # read again only after META_TTL_S
    monkeypatch.setattr(opensearch, "META_TTL_S", 0.0)
    assert retriever.dense is None
    hits = retriever.retrieve("drill", 5)
    assert hits and [c.score for c in hits] == [
        h["_score"]
        for h in options.client().search(index=name, body=retriever.query_body("drill", 5))["hits"][
            "hits"
        ]
    ]
