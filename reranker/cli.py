"""The `reranker` command line. Each command parses options and calls the Python API."""

from __future__ import annotations

import html
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from reranker._version import __version__
from reranker.errors import RerankerError

INDEX_ENV = "RERANKER_INDEX"
DEFAULT_INDEX = "reranker-index"
TITLE_WIDTH = 72


PLUGIN_GROUP = "reranker.commands"


def _plugin_commands() -> dict:
    """Commands other parts install (training's live in reranker.training.cli), by entry point,
    so the runtime never imports them until one is run."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


class _Group(click.Group):
    """Turns kd-reranker errors into a one-line message and exit status 1, never a traceback,
    and adds the plugin commands."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_plugin_commands()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        ep = _plugin_commands().get(name)
        if ep is None:
            return None
        try:
            return ep.load()
        except ImportError as exc:  # the extra is not installed: say which
            message = str(exc)

            @click.command(name, help=f"(unavailable: {message})")
            def unavailable() -> None:
                raise click.ClickException(message)

            return unavailable

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RerankerError as exc:
            raise click.ClickException(str(exc)) from None
        except ImportError as exc:
            raise click.ClickException(str(exc)) from None


index_dir_option = click.option(
    "--index-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get(INDEX_ENV, DEFAULT_INDEX),
    show_default=f"${INDEX_ENV} or ./{DEFAULT_INDEX}",
    help="Directory of the embedded index.",
)


def _connection_option_list() -> list:
    return [
        click.option(
            "--url",
            envvar="RERANKER_OPENSEARCH_URL",
            default="http://127.0.0.1:9200",
            show_default=True,
            help="OpenSearch URL ($RERANKER_OPENSEARCH_URL).",
        ),
        click.option(
            "--index",
            "os_index",
            envvar="RERANKER_OPENSEARCH_INDEX",
            default="products",
            show_default=True,
            help="OpenSearch alias to search or build ($RERANKER_OPENSEARCH_INDEX).",
        ),
        click.option(
            "--username",
            envvar="RERANKER_OPENSEARCH_USER",
            help="Basic-auth user ($RERANKER_OPENSEARCH_USER).",
        ),
        click.option(
            "--password",
            envvar="RERANKER_OPENSEARCH_PASSWORD",
            help="Basic-auth password; prefer $RERANKER_OPENSEARCH_PASSWORD.",
        ),
        click.option(
            "--ca-certs",
            type=click.Path(exists=True, dir_okay=False),
            help="CA bundle to verify the cluster's certificate.",
        ),
        click.option(
            "--no-verify-certs",
            is_flag=True,
            help="Do not verify TLS certificates (verification is on by default).",
        ),
        click.option(
            "--timeout",
            type=float,
            default=10.0,
            show_default=True,
            help="Seconds to wait for OpenSearch per request.",
        ),
        click.option(
            "--retries",
            type=int,
            default=2,
            show_default=True,
            help="Retries on connection errors and timeouts.",
        ),
    ]


def _connection(url, username, password, ca_certs, no_verify_certs, timeout, retries):
    from reranker.index.opensearch import ConnectionOptions

    return ConnectionOptions(
        url=url,
        username=username,
        password=password,
        ca_certs=ca_certs,
        verify_certs=not no_verify_certs,
        timeout=timeout,
        retries=retries,
    )


def backend_options(f):
    """--backend and the OpenSearch connection options, shared by index, search and serve."""
    backend_option = click.option(
        "--backend",
        type=click.Choice(["embedded", "opensearch"]),
        default="embedded",
        show_default=True,
        help="First stage: the embedded rank-bm25 index or an OpenSearch cluster.",
    )

    def packed(*args, backend, os_index, **kwargs):
        conn = {k: kwargs.pop(k) for k in _CONNECTION_KEYS}
        connection = _connection(**conn) if backend == "opensearch" else None
        return f(*args, first_stage=FirstStage(backend, os_index, connection), **kwargs)

    packed.__name__, packed.__doc__ = f.__name__, f.__doc__
    for option in reversed([backend_option, *_connection_option_list()]):
        packed = option(packed)
    return packed


def opensearch_options(f):
    """The OpenSearch connection options alone (commands that only talk to a cluster)."""

    def packed(*args, os_index, **kwargs):
        conn = {k: kwargs.pop(k) for k in _CONNECTION_KEYS}
        return f(
            *args, first_stage=FirstStage("opensearch", os_index, _connection(**conn)), **kwargs
        )

    packed.__name__, packed.__doc__ = f.__name__, f.__doc__
    for option in reversed(_connection_option_list()):
        packed = option(packed)
    return packed


_CONNECTION_KEYS = (
    "url",
    "username",
    "password",
    "ca_certs",
    "no_verify_certs",
    "timeout",
    "retries",
)


@dataclass(frozen=True)
class FirstStage:
    """What --backend and the connection options chose."""

    backend: str
    name: str  # the OpenSearch alias
    connection: object | None  # a reranker.index.opensearch.ConnectionOptions, for OpenSearch


def exact_words_option(f):
    """--exact-words, shared by search and serve."""
    return click.option(
        "--exact-words",
        is_flag=True,
        help="Search the query's words as typed: no spelling correction of words no product has "
        "(embedded index), no fuzzy matching (OpenSearch).",
    )(f)


def model_options(f):
    """--model, --variant and --second-k, shared by search and serve."""
    f = click.option(
        "--second-k",
        type=click.IntRange(min=1),
        help="How many of the first stage's best a cascade's second stage rescores (default: "
        "the model's; 12 for the default profile). Fewer is faster: the default reranks 100 in "
        "~55 ms on a CPU without VNNI with 12, ~36 ms with 6 (BENCHMARKS.md).",
    )(f)
    f = click.option(
        "--variant", help="Model variant to load, e.g. int8 or fp32 (default: the model's)."
    )(f)
    return click.option(
        "--model",
        "model_dir",
        type=click.Path(path_type=Path),
        help="Model directory written by `reranker export`, or a shipped profile: default "
        "(alias fast), accurate, late or cross (default: $RERANKER_MODEL or the shipped default).",
    )(f)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kd-reranker")
def main() -> None:
    """kd-reranker: BM25 retrieval + distilled cross-encoder reranking for product search."""


@main.command("index")
@click.argument("catalog", type=click.Path(path_type=Path))
@index_dir_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "tsv", "jsonl", "parquet"]),
    help="Catalog format (default: from the file extension).",
)
@click.option("--id-field", help="Column with the product id (default: product_id, id, sku, ...).")
@click.option("--title-field", help="Column with the title (default: title, name, ...).")
@click.option(
    "--fields",
    help="Comma-separated attribute columns, in order (default: every column except id and title).",
)
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Leave out rows without id/title, duplicate ids and undecodable rows "
    "(listed, and stored in the index's skipped.json) instead of failing.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing index (atomically).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    help="Also store every product's token ids for this model, so a search with it tokenises "
    "only the query (default: $RERANKER_MODEL or the installed student, if any).",
)
@click.option(
    "--no-tokens",
    is_flag=True,
    help="Do not store product token ids (OpenSearch: nor the model's product text).",
)
@click.option(
    "--stemmer",
    default="english",
    show_default=True,
    help="Embedded index: the Snowball stemmer of BM25's tokens (a language, e.g. german), or "
    "'none' (OpenSearch indexes always stem with Snowball's English).",
)
@click.option(
    "--bm25-k1",
    type=click.FloatRange(min=0),
    help="BM25's term-frequency saturation (both backends; default 0.3): low counts a word said "
    "twice in a product's text nearly once.",
)
@click.option(
    "--bm25-b",
    type=click.FloatRange(0, 1),
    help="BM25's length normalisation (both backends; default 0.4): 0 none, 1 full.",
)
@click.option(
    "--dense/--no-dense",
    default=None,
    help="Also store every product's sentence embedding, so retrieval is hybrid (BM25 fused "
    "with the query's cosine similarity: finds products described in other words or "
    "spellings); --no-dense: BM25 alone. Default: --dense, except on an OpenSearch cluster "
    "without the k-NN plugin (BM25 alone, said).",
)
@click.option(
    "--min-similarity",
    type=click.FloatRange(-1, 1),
    default=0.4,
    show_default=True,
    help="--dense: the cosine similarity a product sharing no word with the query needs to be "
    "a candidate (-1: every product is one).",
)
@click.option(
    "--embedder",
    "embedder_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Embedded index: the sentence embedder for --dense (a directory written by `reranker "
    "export-embedder`; default: the one shipped with the package, which OpenSearch indexes "
    "always use).",
)
@click.option(
    "--search-pipeline",
    help="OpenSearch: make this search pipeline (`reranker opensearch-pipeline`) the new "
    "index's default, so ordinary searches of the alias are reranked.",
)
@backend_options
def index_cmd(
    catalog,
    index_dir,
    fmt,
    id_field,
    title_field,
    fields,
    skip_invalid,
    overwrite,
    quiet,
    model_dir,
    no_tokens,
    stemmer,
    bm25_k1,
    bm25_b,
    dense,
    min_similarity,
    embedder_dir,
    search_pipeline,
    first_stage,
):
    """Index a product CATALOG (CSV, TSV, JSONL or Parquet) for retrieval: stemmed BM25, by
    default fused with dense vectors (hybrid), in the embedded index or in OpenSearch."""
    from reranker.catalog import FieldMapping, describe_skipped
    from reranker.index import build
    from reranker.models import resolve_model_dir
    from reranker.pipeline import default_model_dir, load_model
    from reranker.text import BM25Tokenizer

    attrs = None if fields is None else tuple(f.strip() for f in fields.split(",") if f.strip())
    mapping = FieldMapping(id_field, title_field, attrs)
    common = dict(fmt=fmt, skip_invalid=skip_invalid, overwrite=overwrite, progress=not quiet)
    bm25 = {k: v for k, v in (("bm25_k1", bm25_k1), ("bm25_b", bm25_b)) if v is not None}
    if first_stage.backend == "opensearch":
        if embedder_dir:
            raise click.UsageError(
                "--embedder: the OpenSearch backend embeds with the embedder shipped with the "
                "package (its retriever embeds queries with that one)"
            )
        embedder = _opensearch_embedder(dense, first_stage.connection)
        rerank_fields = None  # the model's product text, for OpenSearch's rerank processor
        model_path = resolve_model_dir(model_dir) if model_dir else default_model_dir()
        if not no_tokens and model_path:
            from reranker.models import model_fields

            rerank_fields = model_fields(model_path)
        report = build.index_catalog_opensearch(
            catalog,
            first_stage.connection,
            first_stage.name,
            mapping,
            rerank_fields=rerank_fields,
            search_pipeline=search_pipeline,
            embedder=embedder,
            min_similarity=min_similarity,
            **bm25,
            **common,
        )
        if embedder is not None:
            click.echo(
                f"stored {embedder.config.dim}-d product vectors of embedder {embedder.name} in "
                "OpenSearch: retrieval is hybrid (BM25 + dense)"
            )
        if rerank_fields is not None:
            click.echo(
                f"stored each product's model text in rerank_text "
                f"(title{''.join(' + ' + f for f in rerank_fields)})"
            )
            model = load_model(model_path)
            if model.config.architecture == "late":  # its states, for the service to read
                states = build.index_catalog(catalog, index_dir, mapping, model=model, **common)
                click.echo(
                    f"stored product encoder states of {states.indexed} products in "
                    f"{states.destination}: `reranker serve --product-states {index_dir}` "
                    "reads them for products OpenSearch sends as text"
                )
    else:
        if search_pipeline:
            raise click.UsageError("--search-pipeline needs --backend opensearch")
        model = None
        if not no_tokens and (model_dir or default_model_dir()):
            model = load_model(model_dir)
        stemmer = None if stemmer.lower() == "none" else stemmer
        try:
            BM25Tokenizer(stemmer=stemmer)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--stemmer") from None
        embedder = _embedder(dense, embedder_dir)
        report = build.index_catalog(
            catalog,
            index_dir,
            mapping,
            model=model,
            embedder=embedder,
            min_similarity=min_similarity,
            stemmer=stemmer,
            **bm25,
            **common,
        )
        if embedder is not None:
            click.echo(
                f"stored {embedder.config.dim}-d product vectors of embedder {embedder.name}: "
                "retrieval is hybrid (BM25 + dense)"
            )
        if model is not None:
            what = "encoder states" if model.config.architecture == "late" else "token ids"
            click.echo(f"stored product {what} for model {model.name}")
    if report.skipped:
        where = f" (full list: {report.skipped_file})" if report.skipped_file else ""
        click.echo(
            f"skipped {len(report.skipped)} invalid row(s): "
            f"{describe_skipped(report.skipped, limit=20)}{where}",
            err=True,
        )
    for pid, reason in report.failed:
        click.echo(f"failed to index {pid}: {reason}", err=True)
    click.echo(
        f"indexed {report.indexed} products, skipped {len(report.skipped)}, "
        f"failed {len(report.failed)}, into {report.destination} in {report.seconds:.1f} s"
    )


def _opensearch_embedder(dense: bool | None, connection):
    """The embedder whose vectors an OpenSearch index stores: the shipped one with --dense;
    by default the shipped one where the cluster has the k-NN plugin (else BM25 alone, said)."""
    from reranker.index.opensearch import has_knn

    if dense is False:
        return None
    if dense is None:
        try:
            knn = has_knn(connection.client(), connection.url)
        except RerankerError as exc:
            raise click.ClickException(str(exc)) from None
        if knn is False:
            click.echo(
                f"OpenSearch at {connection.url} has no k-NN plugin: indexing for BM25 alone "
                "(install opensearch-knn for hybrid retrieval; --no-dense says so quietly)",
                err=True,
            )
            return None
    return _embedder(True, None)


def _embedder(dense: bool, embedder_dir: Path | None):
    """The embedder `reranker index` stores vectors of: ``--embedder``, else the shipped one;
    ``None`` with ``--no-dense``."""
    from reranker.embedder import TextEmbedder
    from reranker.models import packaged_embedder_dir

    if dense is False:
        if embedder_dir is not None:
            raise click.UsageError("--embedder needs --dense")
        return None
    path = embedder_dir or packaged_embedder_dir()
    if path is None:
        raise click.UsageError(
            "no sentence embedder is installed in this package: pass --embedder DIR or "
            "--no-dense (BM25 alone)"
        )
    return TextEmbedder(path)


@main.command("search")
@click.argument("query")
@index_dir_option
@click.option(
    "-k",
    "k",
    default=100,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Candidates taken from BM25 and reranked.",
)
@click.option(
    "-n", "n", default=10, show_default=True, type=click.IntRange(1, 10_000), help="Results shown."
)
@model_options
@click.option("--no-rerank", is_flag=True, help="First-stage order only; no model is loaded.")
@click.option(
    "--budget-ms",
    type=click.FloatRange(min=0, min_open=True),
    help="Latency budget of the search: rerank as many of the top candidates as fit "
    "(the rest keep first-stage order).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@exact_words_option
@backend_options
def search_cmd(
    query,
    index_dir,
    k,
    n,
    model_dir,
    variant,
    second_k,
    no_rerank,
    budget_ms,
    as_json,
    exact_words,
    first_stage,
):
    """Search the index for QUERY and rerank the top K with the cross-encoder."""
    from reranker.errors import QueryError
    from reranker.index import open_retriever
    from reranker.pipeline import SearchPipeline, load_model

    if not query.strip():
        raise QueryError("query is empty")
    t0 = time.perf_counter()
    index = open_retriever(
        first_stage.backend,
        index_dir=index_dir,
        opensearch=first_stage.connection,
        name=first_stage.name,
        exact_words=exact_words,
    )
    model = None
    if not no_rerank:
        model = load_model(model_dir, variant=variant, second_k=second_k)
    load_ms = (time.perf_counter() - t0) * 1e3
    pipeline = SearchPipeline(index, model)
    if (
        model is not None
        and model.config.architecture == "late"
        and pipeline.product_tokens is None
    ):
        click.echo(
            f"note: the index holds no product states for {model.name}, so each candidate is "
            "encoded now (slow); `reranker index` stores them",
            err=True,
        )
    response = pipeline.search(query, k=k, n=n, budget_ms=budget_ms)
    if as_json:
        click.echo(json.dumps(response.to_dict() | {"load_ms": round(load_ms, 1)}, indent=2))
        return
    retrieval = "hybrid (BM25 + dense)" if getattr(index, "dense", None) is not None else "BM25"
    _print_table(response, load_ms, retrieval)


def _print_corrected(response) -> None:
    if response.corrected:
        pairs = ", ".join(f"{w} → {r}" for w, r in response.corrected.items())
        click.echo(f"searched as: {pairs} (unknown words; the nearest the catalog has)")


def _print_table(response, load_ms: float, retrieval: str = "BM25") -> None:
    if response.reranked:
        part = (
            ""
            if response.reranked_k == response.candidates
            else f" (top {response.reranked_k} within the budget)"
        )
        if response.rescored_k is not None and response.rescored_k == response.reranked_k:
            part += ", all rescored by the second stage"
        elif response.rescored_k is not None:
            part += f", its best {response.rescored_k} rescored by the second stage"
        click.echo(
            f"{response.query!r}: {response.candidates} {retrieval} candidates "
            f"reranked by {response.model}{part}"
        )
        _print_corrected(response)
        click.echo(f"{'#':>3} {'first#':>6} {'score':>7} {'prob':>6} {'first':>7}  title")
    else:
        click.echo(
            f"{response.query!r}: {retrieval} order, not reranked "
            f"({response.candidates} candidates)"
        )
        _print_corrected(response)
        click.echo(f"{'#':>3} {'first#':>6} {'first':>7}  title")
    for r in response.results:
        # shown as a shopper reads it: scraped catalogs store "Briggs &amp; Stratton" (the
        # models read the text as stored; --json returns it as stored)
        title = html.unescape(r.title)
        title = title if len(title) <= TITLE_WIDTH else title[: TITLE_WIDTH - 1] + "…"
        if response.reranked and r.rerank_score is not None:
            click.echo(
                f"{r.rank:>3} {r.retrieval_rank:>6} {r.rerank_score:>7.3f} "
                f"{r.rerank_probability:>6.3f} {r.retrieval_score:>7.2f}  {title}"
            )
        elif response.reranked:
            click.echo(
                f"{r.rank:>3} {r.retrieval_rank:>6} {'-':>7} {'-':>6} {r.retrieval_score:>7.2f}  "
                f"{title}"
            )
        else:
            click.echo(f"{r.rank:>3} {r.retrieval_rank:>6} {r.retrieval_score:>7.2f}  {title}")
    if not response.results:
        click.echo("  (no product matches any query term)")
    t = response.timings
    click.echo(
        f"retrieval {t.retrieve_ms:.1f} ms · rerank {t.rerank_ms:.1f} ms · "
        f"total {t.total_ms:.1f} ms (loading index/model {load_ms:.0f} ms)"
    )


@main.command("serve")
@index_dir_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (loopback unless told otherwise).",
)
@click.option("--port", default=8000, show_default=True, type=int)
@model_options
@click.option("--no-rerank", is_flag=True, help="Serve without a model (first-stage order).")
@click.option("--no-index", is_flag=True, help="Serve /rerank only, without an index for /search.")
@click.option(
    "--product-states",
    type=click.Path(file_okay=False, path_type=Path),
    help="An embedded index made with this model (e.g. by `reranker index --backend opensearch "
    "--index-dir DIR`): products that arrive as text (/rerank, Cohere, TEI, OpenSearch's "
    "pipeline) are read from its stored states instead of encoded, when the text matches.",
)
@click.option(
    "--deadline-ms",
    default=500.0,
    show_default=True,
    help="Default time budget per request; past it, first-stage order is returned.",
)
@click.option(
    "--max-batch-pairs",
    default=512,
    show_default=True,
    help="Pairs per model batch across concurrent requests (1: one request at a time).",
)
@click.option(
    "--batch-wait-ms",
    default=2.0,
    show_default=True,
    help="How long the model worker waits to collect concurrent requests.",
)
@click.option("--max-documents", default=1000, show_default=True)
@click.option("--max-field-chars", default=4096, show_default=True)
@click.option("--max-body-bytes", default=4_000_000, show_default=True)
@click.option(
    "--adaptive/--no-adaptive",
    default=True,
    show_default=True,
    help="Rerank as many candidates as fit the deadline (the rest keep first-stage order), "
    "rather than all or none.",
)
@exact_words_option
@backend_options
def serve_cmd(
    index_dir,
    host,
    port,
    model_dir,
    variant,
    second_k,
    no_rerank,
    no_index,
    product_states,
    deadline_ms,
    max_batch_pairs,
    batch_wait_ms,
    max_documents,
    max_field_chars,
    max_body_bytes,
    adaptive,
    exact_words,
    first_stage,
):
    """Run the HTTP rerank service (/rerank, /search, /healthz, /metrics, web demo at /)."""
    from reranker._extras import require

    uvicorn = require("uvicorn", "serve")
    from reranker.index import open_retriever
    from reranker.pipeline import load_model
    from reranker.serve import ServiceSettings, create_app

    retriever = None
    if not no_index:
        retriever = open_retriever(
            first_stage.backend,
            index_dir=index_dir,
            opensearch=first_stage.connection,
            name=first_stage.name,
            exact_words=exact_words,
        )
    t0 = time.perf_counter()
    model = None
    if not no_rerank:
        model = load_model(model_dir, variant=variant, second_k=second_k)
    held = 0
    if product_states is not None and model is not None:
        from reranker.pipeline import attach_product_states

        held = attach_product_states(model, product_states)
    settings = ServiceSettings(
        deadline_ms=deadline_ms,
        max_batch_pairs=max_batch_pairs,
        batch_wait_ms=batch_wait_ms,
        max_documents=max_documents,
        max_field_chars=max_field_chars,
        max_body_bytes=max_body_bytes,
        adaptive=adaptive,
    )
    app = create_app(model, retriever, settings, model_load_seconds=time.perf_counter() - t0)
    stored = retriever is not None and model is not None and hasattr(retriever, "tokens_for")
    stored = stored and retriever.tokens_for(model.token_key) is not None
    click.echo(
        f"serving on http://{host}:{port} (model: {model.name if model else 'none'}, "
        f"index: {'none' if retriever is None else first_stage.backend}"
        f"{', products stored for the model' if stored else ''}"
        f"{f', states of {held} product texts from {product_states}' if held else ''})",
        err=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command("cascade")
@click.argument("first", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("second", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--second-k",
    default="12",
    show_default=True,
    callback=lambda ctx, param, value: _second_k(value),
    help="How many of the first stage's best candidates the second stage rescores, or 'all' "
    "(every candidate: the two students' blend over all of them).",
)
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--first-weight",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Order the rescored ones by SECOND's raw score + this times FIRST's (0: SECOND's alone).",
)
@click.option(
    "--first-variant",
    help="FIRST's variant (default: its own, except a late student's int8-float-query: its "
    "int8 graph).",
)
@click.option("--name", help="The cascade's name in answers (default: the output's).")
def cascade_cmd(first, second, second_k, first_weight, first_variant, output, name) -> None:
    """Write a two-stage model directory: FIRST (e.g. a late student) scores every candidate,
    SECOND (e.g. a full cross-encoder) rescores FIRST's best SECOND_K. It is used like any model
    directory (--model DIR); an index built for it stores FIRST's product forms. `reranker
    calibrate DIR` then fits the rescored ones' probability."""
    from reranker.cascade import write_cascade

    out = write_cascade(
        output,
        first,
        second,
        second_k,
        name,
        first_weight=first_weight,
        first_variant=first_variant,
    )
    blend = f" (+ {first_weight} x the first's score)" if first_weight else ""
    which = "every candidate" if second_k is None else f"its best {second_k}"
    click.echo(f"cascade {out}: {first} on every candidate, {second}{blend} on {which}")


def _second_k(value: str) -> int | None:
    if str(value).strip().lower() == "all":
        return None
    try:
        k = int(value)
    except ValueError:
        k = 0
    if k < 1:
        raise click.BadParameter(f"{value!r} is neither a positive integer nor 'all'")
    return k


@main.command("opensearch-pipeline")
@click.argument("name", default="kd-rerank")
@click.option(
    "--service-url",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="`reranker serve` as the cluster reaches it (its Cohere dialect, /v1/rerank).",
)
@click.option(
    "--window",
    default=10,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Hits reranked per hit asked for (oversample factor): size 10 reranks the top 100.",
)
@click.option(
    "--timeout-s",
    default=1,
    show_default=True,
    type=click.IntRange(1, 600),
    help="Connector connection and read timeouts, whole seconds; past them the search "
    "answers in BM25 order.",
)
@click.option(
    "--text-field",
    default="rerank_text",
    show_default=True,
    help="Document field sent to the model (`reranker index --backend opensearch` stores "
    "the model's product text there).",
)
@click.option(
    "--set-default",
    is_flag=True,
    help="Also make NAME the default search pipeline of --index (through its alias).",
)
@click.option("--dry-run", is_flag=True, help="Print the requests that would be sent; send none.")
@opensearch_options
def opensearch_pipeline_cmd(
    name, service_url, window, timeout_s, text_field, set_default, dry_run, first_stage
):
    """Wire an OpenSearch cluster to a running `reranker serve`: a connector (with timeouts),
    a remote model, and the search pipeline NAME that reranks hits inside the cluster.

    Idempotent: running it again updates what changed and creates nothing twice. Needs the
    ml-commons and neural-search plugins on the cluster."""
    from reranker.index.opensearch_pipeline import PipelineSpec, rerank_ext, wire

    spec = PipelineSpec(
        name, service_url, text_field=text_field, window=window, timeout_s=timeout_s
    )
    report = wire(
        spec,
        first_stage.connection,
        default_index=first_stage.name if set_default else None,
        dry_run=dry_run,
    )
    if dry_run:
        for r in report.requests:
            click.echo(r.show())
        return
    for action in report.actions:
        click.echo(action)
    click.echo(
        f"connector {report.connector_id}, model {report.model_id}, pipeline {name}. Search with "
        f"?search_pipeline={name} and the shopper's text in the body's ext: "
        f"{json.dumps({'ext': rerank_ext('cordless drill')})}"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
