"""The serving cross-encoder: ONNX Runtime + ``tokenizers`` only (no torch).

A model directory holds ``reranker.json`` (this module's :class:`ModelConfig`), ``tokenizer.json``
and one or more ONNX files (``model.onnx`` fp32, ``model.int8.onnx`` quantized). ``reranker
export`` writes it; :class:`CrossEncoder` reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reranker.catalog import Product
from reranker.errors import ModelError

CONFIG_FILE = "reranker.json"
FORMAT = "kd-reranker-cross-encoder"
FORMAT_VERSION = 1
ACTIVATIONS = ("sigmoid", "identity")
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
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    metadata: dict = field(default_factory=dict)  # base model, training, parity figures, ...

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / CONFIG_FILE
        if not path.is_file():
            raise ModelError(
                f"{model_dir} is not a kd-reranker model directory: {CONFIG_FILE} is missing "
                "(write one with `reranker export`)"
            )
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {path}: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ModelError(f"{path} is not a kd-reranker model config (format {FORMAT!r})")
        if raw.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"{path} has format version {raw.get('format_version')}; this kd-reranker reads "
                f"version {FORMAT_VERSION}"
            )
        try:
            cfg = cls(**{**raw, "fields": tuple(raw.get("fields", ()))})
        except TypeError as exc:
            raise ModelError(f"{path} has unexpected settings: {exc}") from None
        if cfg.activation not in ACTIVATIONS:
            raise ModelError(
                f"{path}: activation must be one of {ACTIVATIONS}, not {cfg.activation!r}"
            )
        if cfg.default_variant not in cfg.files:
            raise ModelError(f"{path}: default_variant {cfg.default_variant!r} is not in files")
        if cfg.max_length < 8:
            raise ModelError(f"{path}: max_length must be at least 8, not {cfg.max_length}")
        return cfg


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
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelError(f"model directory not found: {self.model_dir}")
        self.config = ModelConfig.read(self.model_dir)
        self.variant = variant or self.config.default_variant
        if self.variant not in self.config.files:
            raise ModelError(
                f"model {self.model_dir} has no {self.variant!r} variant; "
                f"it has: {', '.join(self.config.files)}"
            )
        self.batch_size = batch_size
        tok_path = self.model_dir / "tokenizer.json"
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # tokenizers raises a bare Exception for a missing/broken file
            raise ModelError(f"cannot load tokenizer {tok_path}: {_first_line(exc)}") from None
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.config.max_length, strategy="longest_first")
        self.query_tokenizer = Tokenizer.from_file(str(tok_path))
        self.query_tokenizer.no_padding()
        self.query_tokenizer.no_truncation()

        onnx_path = self.model_dir / self.config.files[self.variant]
        if not onnx_path.is_file():
            raise ModelError(f"model file missing: {onnx_path}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or min(os.cpu_count() or 1, 8)
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load {onnx_path}: {_first_line(exc)}") from None
        self.input_names = {i.name for i in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self.input_names:
            raise ModelError(f"{onnx_path} lacks inputs input_ids/attention_mask")

    @property
    def name(self) -> str:
        return str(self.config.metadata.get("name") or self.model_dir.name)

    def _truncate_query(self, query: str) -> str:
        query = query[:MAX_QUERY_CHARS]
        limit = self.config.max_query_tokens or self.config.max_length // 2
        enc = self.query_tokenizer.encode(query, add_special_tokens=False)
        if len(enc.ids) <= limit:
            return query
        return query[: enc.offsets[limit - 1][1]]

    def score(self, query: str, texts: Sequence[str]) -> Scores:
        """Score ``texts`` (product texts) against ``query``; returns arrays in input order."""
        return self.score_pairs([query] * len(texts), texts)

    def score_pairs(self, queries: Sequence[str], texts: Sequence[str]) -> Scores:
        """Score (query, text) pairs, queries may differ (the service batches requests this
        way); returns arrays in input order."""
        if len(queries) != len(texts):
            raise ValueError(f"{len(queries)} queries but {len(texts)} texts")
        raw = np.zeros(len(texts), dtype=np.float32)
        if not texts:
            return Scores(raw, raw.copy())
        cut = {q: self._truncate_query(q) for q in dict.fromkeys(queries)}
        encodings = self.tokenizer.encode_batch(
            [(cut[q], t) for q, t in zip(queries, texts, strict=True)]
        )
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = int(lengths[idx].max())
            ids = np.full((len(idx), width), self.config.pad_token_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            types = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                e = encodings[i]
                n = len(e.ids)
                ids[row, :n] = e.ids
                mask[row, :n] = 1
                types[row, :n] = e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = types
            logits = self.session.run(None, feeds)[0]
            raw[idx] = np.asarray(logits, dtype=np.float32).reshape(len(idx), -1)[:, 0]
        return Scores(raw, self._activate(raw))

    def score_products(self, query: str, products: Sequence[Product]) -> Scores:
        return self.score(query, [p.text(self.config.fields) for p in products])

    def _activate(self, raw: np.ndarray) -> np.ndarray:
        if self.config.activation == "sigmoid":
            return (1.0 / (1.0 + np.exp(-raw.astype(np.float64)))).astype(np.float32)
        return raw.copy()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
