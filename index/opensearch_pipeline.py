"""Reranking inside OpenSearch's own query path: a search pipeline whose ``rerank`` response
processor (neural-search) calls ``reranker serve`` through an ml-commons remote model.

What :func:`wire` creates, each step idempotent (re-running updates, never duplicates):

1. cluster settings: the service's URL added to
   ``plugins.ml_commons.trusted_connector_endpoints_regex``;
   ``plugins.ml_commons.connector.private_ip_enabled`` when the service is on a private or
   loopback address; ``plugins.ml_commons.only_run_on_ml_node: false`` (a remote model needs
   no ML node);
2. an HTTP connector named ``<name>-connector`` to the service's Cohere dialect
   (``POST /v1/rerank``, ml-commons' ``cohere.rerank`` pre/post-processing), with connection and
   read timeouts (whole seconds: ml-commons 2.19 reads them as seconds; without them they are
   30,000 s);
3. a remote model ``<name>-model`` on it, deployed;
4. the search pipeline ``<name>``: ``oversample`` (the request's ``size`` times ``window``) →
   ``rerank`` (the model over the text field the index stores, ``ignore_failure: true``) →
   ``truncate_hits`` (back to the size asked for), so a search for 10 hits gets the best 10 of
   the first ``10 * window`` BM25 hits;
5. optionally ``index.search.default_pipeline`` on an index, so ordinary searches use it.

Failures: when the service is down or slower than the timeout, ``ignore_failure`` keeps the
search answering in BM25 order (within about the read timeout), and OpenSearch counts the
processor's failures in ``GET _nodes/stats/search_pipeline``; the service counts its own
fallbacks in ``kd_fallbacks`` on ``/metrics``.

A search on the pipeline names the shopper's text for the reranker in its ``ext`` (the rerank
processor reads it nowhere else): ``"ext": {"rerank": {"query_context": {"query_text": "..."}}}``
(or ``query_text_path``, a path into the query); :func:`rerank_ext` builds it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from reranker.errors import RerankerError
from reranker.index.opensearch import RERANK_TEXT_FIELD, ConnectionOptions, describe

_REQUEST_BODY = (
    '{ "documents": ${parameters.documents}, "query": "${parameters.query}", '
    '"model": "${parameters.model}", "top_n": ${parameters.top_n} }'
)


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    service_url: str
    text_field: str = RERANK_TEXT_FIELD
    window: int = 10  # the oversample factor: hits reranked per hit asked for
    timeout_s: int = 1  # connector connection and read timeouts, whole seconds
    max_connections: int = 30
    ignore_failure: bool = True

    def __post_init__(self) -> None:
        parsed = urlparse(self.service_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise RerankerError(
                f"not a service URL: {self.service_url!r} (use http(s)://host:port of "
                "`reranker serve`)"
            )
        if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]*", self.name):
            raise RerankerError(
                f"pipeline name {self.name!r}: use lowercase letters, digits, '-' and '_'"
            )
        if self.window < 1 or self.timeout_s < 1:
            raise RerankerError("--window and --timeout-s must be at least 1")

    @property
    def connector_name(self) -> str:
        return f"{self.name}-connector"

    @property
    def model_name(self) -> str:
        return f"{self.name}-model"

    @property
    def rerank_url(self) -> str:
        return self.service_url.rstrip("/") + "/v1/rerank"

    def connector_body(self) -> dict:
        return {
            "name": self.connector_name,
            "description": f"kd-reranker service at {self.service_url} (Cohere rerank dialect)",
            "version": "1",
            "protocol": "http",
            # ml-commons requires a credential; the service takes none (keep it on a private
            # network, or put an authenticating proxy in front and name its key here)
            "credential": {"api_key": "unused"},
            "parameters": {"model": "kd-reranker"},
            "client_config": {
                "connection_timeout": self.timeout_s,
                "read_timeout": self.timeout_s,
                "max_connection": self.max_connections,
                "max_retry_times": 0,
            },
            "actions": [
                {
                    "action_type": "predict",
                    "method": "POST",
                    "url": self.rerank_url,
                    "headers": {"content-type": "application/json"},
                    "request_body": _REQUEST_BODY,
                    "pre_process_function": "connector.pre_process.cohere.rerank",
                    "post_process_function": "connector.post_process.cohere.rerank",
                }
            ],
        }

    def pipeline_body(self, model_id: str) -> dict:
        rerank = {
            "ml_opensearch": {"model_id": model_id},
            "context": {"document_fields": [self.text_field]},
            "ignore_failure": self.ignore_failure,
            "tag": "kd-reranker",
            "description": f"reranked by kd-reranker at {self.service_url}",
        }
        if self.window == 1:
            return {
                "description": "the page of BM25 hits, reranked by kd-reranker",
                "response_processors": [{"rerank": rerank}],
            }
        return {
            "description": f"BM25 top {self.window}x the page, reranked by kd-reranker",
            "request_processors": [{"oversample": {"sample_factor": float(self.window)}}],
            "response_processors": [{"rerank": rerank}, {"truncate_hits": {}}],
        }

    def endpoint_regex(self) -> str:
        return "^" + re.escape(self.service_url.rstrip("/")) + "/.*$"


def rerank_ext(query_text: str) -> dict:
    """The ``ext`` a search on the pipeline carries: the shopper's text for the reranker."""
    return {"rerank": {"query_context": {"query_text": query_text}}}


def _private(host: str) -> bool:
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return any(
        ipaddress.ip_address(a.split("%")[0]).is_private
        or ipaddress.ip_address(a.split("%")[0]).is_loopback
        for a in addrs
    )


@dataclass
class Request:
    method: str
    path: str
    body: dict | None = None
    note: str = ""

    def show(self) -> str:
        head = f"{self.method} {self.path}" + (f"    # {self.note}" if self.note else "")
        return head + ("\n" + json.dumps(self.body, indent=2) if self.body is not None else "")


@dataclass
class WireReport:
    connector_id: str | None
    model_id: str | None
    pipeline: str
    actions: list[str] = field(default_factory=list)  # what was created or changed
    requests: list[Request] = field(default_factory=list)  # --dry-run: what would be sent


class _Cluster:
    """The few calls the wiring needs, through opensearch-py's transport (one-line errors)."""

    def __init__(self, options: ConnectionOptions) -> None:
        self.options = options
        self.client = options.client()

    def __call__(self, method: str, path: str, body: dict | None = None, **params):
        try:
            return self.client.transport.perform_request(
                method, path, body=body, params=params or None
            )
        except Exception as exc:
            raise describe(exc, self.options.url) from None

    def find(self, kind: str, query: dict) -> list[dict]:
        """Documents of ml-commons' connectors or models matching ``query`` (none when
        ml-commons has not created its index yet)."""
        try:
            res = self.client.transport.perform_request(
                "POST", f"/_plugins/_ml/{kind}/_search", body={"query": query, "size": 100}
            )
        except Exception as exc:
            if "index_not_found" in str(exc) or getattr(exc, "status_code", None) == 404:
                return []
            raise describe(exc, self.options.url) from None
        return [dict(h["_source"], _id=h["_id"]) for h in res.get("hits", {}).get("hits", [])]


def _check_plugins(cluster: _Cluster) -> None:
    names = {p["component"] for p in cluster("GET", "/_cat/plugins", format="json")}
    missing = [p for p in ("opensearch-ml", "opensearch-neural-search") if p not in names]
    if missing:
        raise RerankerError(
            f"OpenSearch at {cluster.options.url} lacks the plugin(s) {', '.join(missing)}: "
            "the rerank pipeline needs ml-commons and neural-search (scripts/opensearch.sh "
            "installs them)"
        )


def _wait_task(cluster: _Cluster, task_id: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        task = cluster("GET", f"/_plugins/_ml/tasks/{task_id}")
        state = task.get("state")
        if state == "COMPLETED":
            return task
        if state in ("FAILED", "CANCELLED", "COMPLETED_WITH_ERROR"):
            raise RerankerError(f"ml-commons task {task_id} {state}: {task.get('error', '')}")
        if time.monotonic() > deadline:
            raise RerankerError(f"ml-commons task {task_id} still {state} after {timeout_s:.0f} s")
        time.sleep(0.3)


def _wait_deployed(cluster: _Cluster, model_id: str, timeout_s: float = 60.0) -> None:
    """Until the model's real-time state is DEPLOYED (a register task completes when the model
    is registered; deploying it goes on after)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = cluster("GET", f"/_plugins/_ml/models/{model_id}").get("model_state")
        if state == "DEPLOYED":
            return
        if state in ("DEPLOY_FAILED",) or time.monotonic() > deadline:
            raise RerankerError(f"ml-commons model {model_id} is {state}, not deployed")
        time.sleep(0.3)


def _same_connector(have: dict, want: dict) -> bool:
    keys = ("description", "protocol", "parameters", "client_config")
    if any(have.get(k) != want.get(k) for k in keys if k != "client_config"):
        return False
    cfg = have.get("client_config") or {}
    for k, v in want["client_config"].items():
        if cfg.get(k) != v:
            return False
    act_have = dict((have.get("actions") or [{}])[0])
    act_want = dict(want["actions"][0])
    for act in (act_have, act_want):  # stored upper-case
        act["action_type"] = str(act.get("action_type", "")).lower()
    return all(act_have.get(k) == act_want.get(k) for k in act_want)


def wire(
    spec: PipelineSpec,
    options: ConnectionOptions,
    *,
    default_index: str | None = None,
    dry_run: bool = False,
) -> WireReport:
    """Create or update the connector, model and search pipeline of ``spec`` (see module doc).
    With ``dry_run``, nothing is sent but reads: the report lists the requests."""
    cluster = _Cluster(options)
    report = WireReport(None, None, spec.name)

    def send(method: str, path: str, body: dict | None = None, note: str = "", **params):
        report.requests.append(Request(method, path, body, note))
        if dry_run:
            return {}
        return cluster(method, path, body, **params)

    _check_plugins(cluster)

    # 1. cluster settings
    current = cluster("GET", "/_cluster/settings", include_defaults="true", flat_settings="true")
    merged = {**current.get("defaults", {}), **current.get("persistent", {})}
    merged.update(current.get("transient", {}))
    key = "plugins.ml_commons.trusted_connector_endpoints_regex"
    regexes = merged.get(key) or []
    if isinstance(regexes, str):
        regexes = [regexes]
    settings: dict = {}
    if spec.endpoint_regex() not in regexes:
        settings[key] = [*regexes, spec.endpoint_regex()]
    host = urlparse(spec.service_url).hostname or ""
    private_key = "plugins.ml_commons.connector.private_ip_enabled"
    if _private(host) and str(merged.get(private_key, "false")).lower() != "true":
        settings[private_key] = True
    node_key = "plugins.ml_commons.only_run_on_ml_node"
    if str(merged.get(node_key, "true")).lower() != "false":
        settings[node_key] = False
    if settings:
        send("PUT", "/_cluster/settings", {"persistent": settings}, "trust the service's URL")
        report.actions.append("cluster settings: " + ", ".join(sorted(settings)))

    # 2. connector
    want = spec.connector_body()
    found = cluster.find("connectors", {"term": {"name.keyword": spec.connector_name}})
    connector_id = found[0]["_id"] if found else None
    models = (  # filtered here: connector_id is not a keyword field in ml-commons' index
        [
            m
            for m in cluster.find("models", {"match": {"connector_id": connector_id}})
            if m.get("connector_id") == connector_id
        ]
        if connector_id
        else []
    )
    if connector_id is None:
        res = send("POST", "/_plugins/_ml/connectors/_create", want, "new connector")
        connector_id = res.get("connector_id", "<new connector id>")
        report.actions.append(f"connector {spec.connector_name} created")
    elif not _same_connector(found[0], want):
        for m in models:  # a deployed model's connector cannot change under it
            if m.get("model_state") in ("DEPLOYED", "PARTIALLY_DEPLOYED", "DEPLOYING"):
                send("POST", f"/_plugins/_ml/models/{m['_id']}/_undeploy", None, "to update")
        send("PUT", f"/_plugins/_ml/connectors/{connector_id}", want, "update the connector")
        report.actions.append(f"connector {spec.connector_name} updated")
    report.connector_id = connector_id

    # 3. model, deployed
    model = next((m for m in models if m.get("name") == spec.model_name), None)
    if model is None:
        body = {
            "name": spec.model_name,
            "function_name": "remote",
            "description": f"kd-reranker at {spec.service_url}",
            "connector_id": connector_id,
        }
        res = send(
            "POST", "/_plugins/_ml/models/_register", body, "new remote model", deploy="true"
        )
        model_id = res.get("model_id")
        if not dry_run:
            task = _wait_task(cluster, res["task_id"]) if res.get("task_id") else {}
            model_id = model_id or task.get("model_id")
            _wait_deployed(cluster, model_id)
        report.actions.append(f"model {spec.model_name} registered and deployed")
    else:
        model_id = model["_id"]
        updated = any(a.endswith("updated") for a in report.actions)
        # the state from a real-time GET: the search index of models lags behind deployments
        state = (
            "UNDEPLOYED"
            if updated
            else cluster("GET", f"/_plugins/_ml/models/{model_id}").get("model_state")
        )
        if state == "DEPLOYING" and not dry_run:  # a deployment under way: wait for it
            _wait_deployed(cluster, model_id)
        elif state != "DEPLOYED":
            res = send("POST", f"/_plugins/_ml/models/{model_id}/_deploy", None, "deploy")
            if not dry_run and res.get("task_id"):
                try:
                    _wait_task(cluster, res["task_id"])
                except RerankerError as exc:
                    if "Duplicate deploy" not in str(exc):  # another deploy of it is running
                        raise
                _wait_deployed(cluster, model_id)
            report.actions.append(f"model {spec.model_name} deployed")
    report.model_id = model_id or "<new model id>"

    # 4. search pipeline (PUT replaces it: idempotent)
    send("PUT", f"/_search/pipeline/{spec.name}", spec.pipeline_body(report.model_id), "pipeline")
    report.actions.append(f"search pipeline {spec.name} written")

    # 5. default pipeline of an index (through an alias: its current physical index)
    if default_index:
        send(
            "PUT",
            f"/{default_index}/_settings",
            {"index.search.default_pipeline": spec.name},
            "ordinary searches of the index use the pipeline",
        )
        report.actions.append(f"default search pipeline of {default_index}")
    return report


def pipeline_failures(options: ConnectionOptions, name: str) -> int:
    """Failed rerank processor runs of pipeline ``name`` across nodes (from
    ``_nodes/stats/search_pipeline``)."""
    stats = _Cluster(options)("GET", "/_nodes/stats/search_pipeline")
    total = 0
    for node in stats.get("nodes", {}).values():
        pipe = node.get("search_pipeline", {}).get("pipelines", {}).get(name, {})
        for proc in pipe.get("response_processors", []):
            for key, value in proc.items():
                if key.startswith("rerank"):
                    total += int(value.get("stats", {}).get("failed", 0))
    return total
