"""The serving cross-encoder: ONNX Runtime + ``tokenizers`` only (no torch).

A model directory holds ``reranker.json`` (this module's :class:`ModelConfig`), ``tokenizer.json``
and one or more ONNX files (``model.onnx`` fp32, ``model.int8.onnx`` quantized). ``reranker
export`` writes it; :class:`CrossEncoder` reads it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reranker.adaptive import LatencyModel
from reranker.catalog import Product
from reranker.errors import ModelError
from reranker.tokens import PairEncoder, token_key

CONFIG_FILE = "reranker.json"
FORMAT = "kd-reranker-cross-encoder"
FORMAT_VERSION = 1
ACTIVATIONS = ("sigmoid", "identity")
ARCHITECTURES = ("cross", "late")
#: A query is cut to this many characters before tokenising (then to the model's token limit).
MAX_QUERY_CHARS = 2048


@dataclass(frozen=True)
class ModelConfig:
    """Inference settings saved with a model, so a loader never guesses."""

    max_length: int
    fields: tuple[str, ...] = ()  # product attributes the model reads, in order, after the title
    activation: str = "sigmoid"
    files: dict[str, str] = field(default_factory=lambda: {"fp32": "model.onnx"})
    default_variant: str = "fp32"
    pad_token_id: int = 0
    max_query_tokens: int | None = None  # default: half of max_length
    architecture: str = "cross"  # or "late" (reranker.late: product encoder + joint graphs)
    encoder_files: dict[str, str] = field(default_factory=dict)  # late: variant → product encoder
    #: probability = sigmoid(scale * raw + bias), fitted on judged pairs the model was not
    #: trained on (`reranker calibrate`); empty: the plain sigmoid of the raw score
    calibration: dict = field(default_factory=dict)
    #: variant → its own calibration, for variants other than the one ``calibration`` was
    #: fitted on (its ``variant``); a variant without one uses ``calibration``
    calibrations: dict = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    metadata: dict = field(default_factory=dict)  # base model, training, parity figures, ...

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def calibration_of(self, variant: str) -> dict:
        """The Platt calibration that applies to ``variant``'s raw scores (empty: none)."""
        return self.calibrations.get(variant) or self.calibration

    @classmethod
    def read(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / CONFIG_FILE
        raw = read_config(
            path, FORMAT, FORMAT_VERSION, "model", "(write one with `reranker export`)"
        )
        try:
            cfg = cls(**{**raw, "fields": tuple(raw.get("fields", ()))})
        except TypeError as exc:
            raise ModelError(f"{path} has unexpected settings: {exc}") from None
        if cfg.activation not in ACTIVATIONS:
            raise ModelError(
                f"{path}: activation must be one of {ACTIVATIONS}, not {cfg.activation!r}"
            )
        if cfg.architecture not in ARCHITECTURES:
            raise ModelError(
                f"{path}: architecture must be one of {ARCHITECTURES}, not {cfg.architecture!r}"
            )
        if cfg.architecture == "late" and set(cfg.encoder_files) != set(cfg.files):
            raise ModelError(f"{path}: a late model needs an encoder graph for each variant")
        if cfg.default_variant not in cfg.files:
            raise ModelError(f"{path}: default_variant {cfg.default_variant!r} is not in files")
        if not isinstance(cfg.calibrations, dict):
            raise ModelError(f"{path}: calibrations must map variants to calibrations")
        for where, cal in [("calibration", cfg.calibration)] + [
            (f"calibrations[{v!r}]", c) for v, c in cfg.calibrations.items()
        ]:
            if cal and not (
                isinstance(cal, dict)
                and all(isinstance(cal.get(k), int | float) for k in ("scale", "bias"))
            ):
                raise ModelError(f"{path}: {where} needs numeric 'scale' and 'bias'")
        if cfg.max_length < 8:
            raise ModelError(f"{path}: max_length must be at least 8, not {cfg.max_length}")
        return cfg


def read_config(path: Path, fmt: str, version: int, what: str, hint: str = "") -> dict:
    """The JSON object of a runtime directory's config file, checked to be of ``fmt`` at
    ``version``; one-line :class:`ModelError` otherwise (``what``: "model", "embedder"; ``hint``
    follows the message for a missing file)."""
    if not path.is_file():
        raise ModelError(
            f"{path.parent} is not a kd-reranker {what} directory: {path.name} is missing"
            + (f" {hint}" if hint else "")
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise ModelError(f"{path} is not a kd-reranker {what} config (format {fmt!r})")
    if raw.get("format_version") != version:
        raise ModelError(
            f"{path} has format version {raw.get('format_version')}; this kd-reranker reads "
            f"version {version}"
        )
    return raw


@dataclass(frozen=True)
class Scores:
    """Scores of a batch of products for one query, in input order."""

    raw: np.ndarray  # the model's logit
    probability: np.ndarray  # activation(raw), in [0, 1] for sigmoid


class CrossEncoder:
    """Scores (query, product) pairs with an exported cross-encoder.

    >>> model = CrossEncoder("path/to/model")  # doctest: +SKIP
    >>> scores = model.score("cordless drill", ["DEWALT drill", "Garden hose"])  # doctest: +SKIP
    >>> scores.probability  # doctest: +SKIP
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        variant: str | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        session_options: dict | None = None,
        session_config: dict[str, str] | None = None,
    ) -> None:
        """``session_options``: onnxruntime ``SessionOptions`` attributes to set (e.g.
        ``{"enable_cpu_mem_arena": False}``; ``graph_optimization_level`` as one of
        ``disable``, ``basic``, ``extended``, ``all``), for tuning and benchmarks.
        ``session_config``: session config entries (e.g. ``{"session.intra_op.allow_spinning":
        "0"}``, as a cascade sets for its stages so that one's idle threads do not take the
        cores from the other)."""

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelError(f"model directory not found: {self.model_dir}")
        self.config = ModelConfig.read(self.model_dir)
        if self.config.architecture == "late" and type(self) is CrossEncoder:
            raise ModelError(
                f"{self.model_dir} holds a late-interaction model: load it with "
                "reranker.open_model() (or reranker.late.LateCrossEncoder)"
            )
        self.variant = variant or self.config.default_variant
        if self.variant not in self.config.files:
            raise ModelError(
                f"model {self.model_dir} has no {self.variant!r} variant; "
                f"it has: {', '.join(self.config.files)}"
            )
        self.batch_size = batch_size
        tok_path = self.model_dir / "tokenizer.json"
        self.tokenizer = load_tokenizer(tok_path)
        try:
            self.pairs = PairEncoder(
                self.tokenizer, self.config.max_length, self.config.pad_token_id
            )
        except ValueError as exc:
            raise ModelError(f"{tok_path}: {exc}") from None
        self.max_query_tokens = self.config.max_query_tokens or self.config.max_length // 2
        #: What product ids stored with an index must match to be used by this model.
        self.token_key = token_key(tok_path, self.config.fields, self.config.max_length)
        #: Milliseconds spent in each part of the last scoring call.
        self.last_timings: dict[str, float] = {}
        #: Predicted scoring time for n pairs, learnt from this model's calls (adaptive k).
        self.latency = LatencyModel()

        onnx_path = self.model_dir / self.config.files[self.variant]
        self.session = self._session(onnx_path, threads, session_options, session_config)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self._check_inputs(onnx_path)

    def _session(
        self,
        onnx_path: Path,
        threads: int | None,
        session_options: dict | None,
        config_entries: dict[str, str] | None = None,
    ):
        return onnx_session(onnx_path, threads, session_options, config_entries)

    def _check_inputs(self, path: Path) -> None:
        if not {"input_ids", "attention_mask"} <= self.input_names:
            raise ModelError(f"{path} lacks inputs input_ids/attention_mask")

    @property
    def name(self) -> str:
        return str(self.config.metadata.get("name") or self.model_dir.name)

    def query_ids(self, query: str) -> np.ndarray:
        """A query's token ids (no special tokens), cut to the model's query limit."""
        enc = self.tokenizer.encode(query[:MAX_QUERY_CHARS], add_special_tokens=False)
        return np.asarray(enc.ids[: self.max_query_tokens], dtype=np.int32)

    def product_inputs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """What this model keeps for a product (here its token ids), as :meth:`score_ids` takes
        them."""
        return self.pairs.text_ids(texts)

    def build_store(self, texts: Sequence[str], progress: bool = False):
        """Every product's stored form for an index (:class:`reranker.tokens.ProductTokens`)."""
        from reranker.tokens import ProductTokens

        return ProductTokens.build(self.pairs, texts, self.token_key)

    def score(self, query: str, texts: Sequence[str]) -> Scores:
        """Score ``texts`` (product texts) against ``query``; returns arrays in input order."""
        return self.score_pairs([query] * len(texts), texts)

    def score_pairs(self, queries: Sequence[str], texts: Sequence[str]) -> Scores:
        """Score (query, text) pairs, queries may differ (the service batches requests this
        way); returns arrays in input order."""
        if len(queries) != len(texts):
            raise ValueError(f"{len(queries)} queries but {len(texts)} texts")
        t0 = time.perf_counter()
        qids = {q: self.query_ids(q) for q in dict.fromkeys(queries)}
        products = self.product_inputs(texts) if texts else []
        tokenize_ms = (time.perf_counter() - t0) * 1e3
        scores = self.score_ids([qids[q] for q in queries], products)
        self.last_timings["tokenize_ms"] = tokenize_ms
        return scores

    def score_ids(
        self,
        queries: Sequence[np.ndarray] | np.ndarray,
        products: Sequence[np.ndarray],
        batch_size: int | None = None,
    ) -> Scores:
        """Score pairs given as token ids (no special tokens): one query's ids for all products,
        or one per product; products' ids as stored with an index (:mod:`reranker.tokens`).
        ``batch_size``: pairs per inference call (default: the model's ``batch_size``)."""
        step, queries, raw, timings = self._begin(queries, products, batch_size)
        if not len(products):
            return Scores(raw, raw.copy())
        t0 = time.perf_counter()
        order = np.argsort(self.pairs.pair_lengths(queries, products), kind="stable")
        for start in range(0, len(order), step):
            t1 = time.perf_counter()
            idx = order[start : start + step]
            batch = self.pairs.build([queries[i] for i in idx], [products[i] for i in idx])
            feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = batch.token_type_ids
            t2 = time.perf_counter()
            logits = self.session.run(None, feeds)[0]
            t3 = time.perf_counter()
            raw[idx] = np.asarray(logits, dtype=np.float32).reshape(len(idx), -1)[:, 0]
            timings["tensors_ms"] += (t2 - t1) * 1e3
            timings["inference_ms"] += (t3 - t2) * 1e3
        return self._finish(raw, t0, timings)

    def _begin(self, queries, products: Sequence, batch_size: int | None):
        """The start of a :meth:`score_ids` call: pairs per inference call, one query per product,
        zeroed scores and this call's (fresh) :attr:`last_timings`."""
        if isinstance(queries, np.ndarray):
            queries = [queries] * len(products)
        raw = np.zeros(len(products), dtype=np.float32)
        timings = {"tokenize_ms": 0.0, "tensors_ms": 0.0, "inference_ms": 0.0, "post_ms": 0.0}
        self.last_timings = timings
        return batch_size or self.batch_size, queries, raw, timings

    def _finish(self, raw: np.ndarray, t0: float, timings: dict) -> Scores:
        """Probabilities, the rest of the call's time as post-processing, the cost model."""
        t1 = time.perf_counter()
        probability = self._activate(raw)
        t2 = time.perf_counter()
        rest_ms = (t1 - t0) * 1e3 - timings["tensors_ms"] - timings["inference_ms"]
        timings["post_ms"] = rest_ms + (t2 - t1) * 1e3
        self.latency.observe(len(raw), (t2 - t0) * 1e3)
        return Scores(raw, probability)

    def calibrate_latency(self) -> LatencyModel:
        """Time a few calls on a typical product text so :attr:`latency` can choose ``k`` for a
        budget from the first query on (done once; later calls keep it current)."""
        if not self.latency.calibrated:
            q = self.query_ids("cordless drill 20 volt")
            p = self._typical_product()
            self.latency.calibrate(lambda n: self.score_ids(q, [p] * n))
        return self.latency

    def _typical_product(self) -> np.ndarray:
        """A product's model input of typical size, for timing."""
        text = "DEWALT 20-Volt MAX Lithium-Ion Cordless Compact Drill/Driver Kit | brand: DEWALT"
        return self.product_inputs([text])[0]

    def score_products(
        self, query: str, products: Sequence[Product], token_ids: Sequence[np.ndarray] | None = None
    ) -> Scores:
        """Score products for a query; ``token_ids``: their ids stored with the index (same
        ``token_key``), which saves tokenising the product text."""
        if token_ids is None:
            return self.score(query, [p.text(self.config.fields) for p in products])
        t0 = time.perf_counter()
        q = self.query_ids(query)
        tokenize_ms = (time.perf_counter() - t0) * 1e3
        scores = self.score_ids(q, token_ids)
        self.last_timings["tokenize_ms"] = tokenize_ms
        return scores

    def _activate(self, raw: np.ndarray) -> np.ndarray:
        if self.config.activation == "sigmoid":
            return sigmoid_probability(raw, self.config.calibration_of(self.variant))
        return raw.copy()


def sigmoid_probability(raw: np.ndarray, calibration: dict | None = None) -> np.ndarray:
    """``sigmoid(scale * raw + bias)`` with a fitted Platt ``calibration`` (``scale``,
    ``bias``), else the plain sigmoid of ``raw``; float32."""
    z = np.asarray(raw, dtype=np.float64)
    if calibration:
        z = float(calibration["scale"]) * z + float(calibration["bias"])
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def load_tokenizer(path: Path):
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json``, padding and truncation off (the
    runtimes pad and cut themselves); one-line :class:`ModelError` when it cannot be read."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a missing/broken file
        raise ModelError(f"cannot load tokenizer {path}: {_first_line(exc)}") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def onnx_session(
    onnx_path: Path,
    threads: int | None = None,
    session_options: dict | None = None,
    config_entries: dict[str, str] | None = None,
):
    """A CPU ``onnxruntime.InferenceSession`` with the runtime's settings (all graph
    optimisations, ``threads`` intra-op threads, default: the cores up to 8); ``session_options``
    and ``config_entries`` as :class:`CrossEncoder` takes them."""
    import onnxruntime as ort

    if not onnx_path.is_file():
        raise ModelError(f"model file missing: {onnx_path}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or min(os.cpu_count() or 1, 8)
    opts.inter_op_num_threads = 1
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    for name, value in (session_options or {}).items():
        if name == "graph_optimization_level":
            value = levels[value]
        if not hasattr(opts, name):
            raise ModelError(f"onnxruntime SessionOptions has no {name!r}")
        setattr(opts, name, value)
    for key, value in (config_entries or {}).items():
        opts.add_session_config_entry(key, value)
    try:
        return ort.InferenceSession(
            str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"cannot load {onnx_path}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
