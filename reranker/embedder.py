"""The dense first stage's text encoder: a sentence-embedding model in ONNX Runtime (no torch).

A directory holds ``embedder.json`` (:class:`EmbedderConfig`), ``tokenizer.json`` and an ONNX
graph that maps ``input_ids``/``attention_mask`` (and ``token_type_ids`` when it takes them) to
one mean-pooled, L2-normalised vector per text. ``reranker-train export-embedder`` writes it;
the package ships one (all-MiniLM-L6-v2 fine-tuned on Home Depot train queries, int8) in
``reranker/models/retriever``. The index
stores every product's vector; per query only the query is encoded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reranker.crossencoder import MAX_QUERY_CHARS, load_tokenizer, onnx_session, read_config
from reranker.errors import ModelError

CONFIG_FILE = "embedder.json"
FORMAT = "kd-reranker-embedder"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EmbedderConfig:
    """What a loader needs to embed text exactly as the export was checked to."""

    max_length: int = 64  # tokens per text, special tokens included
    dim: int = 384
    file: str = "model.onnx"
    pad_token_id: int = 0
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    metadata: dict = field(default_factory=dict)  # base model, licence, parity figures

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, directory: Path) -> EmbedderConfig:
        path = directory / CONFIG_FILE
        raw = read_config(path, FORMAT, FORMAT_VERSION, "embedder")
        try:
            cfg = cls(**raw)
        except TypeError as exc:
            raise ModelError(f"{path} has unexpected settings: {exc}") from None
        if cfg.max_length < 4 or cfg.dim < 1:
            raise ModelError(f"{path}: max_length and dim must be positive")
        return cfg


class TextEmbedder:
    """Texts → L2-normalised float32 vectors, so a dot product is the cosine similarity.

    >>> embedder = TextEmbedder("reranker/models/retriever")  # doctest: +SKIP
    >>> embedder.embed(["cordless drill"]).shape  # doctest: +SKIP
    (1, 384)
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        threads: int | None = None,
        batch_size: int = 64,
        session_config: dict[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ModelError(f"embedder directory not found: {self.directory}")
        self.config = EmbedderConfig.read(self.directory)
        self.tokenizer = load_tokenizer(self.directory / "tokenizer.json")
        self.tokenizer.enable_truncation(self.config.max_length)
        self.batch_size = batch_size
        onnx_path = self.directory / self.config.file
        self.session = onnx_session(onnx_path, threads, None, session_config)
        self.input_names = {i.name for i in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self.input_names:
            raise ModelError(f"{onnx_path} lacks inputs input_ids/attention_mask")

    @property
    def name(self) -> str:
        return str(self.config.metadata.get("name") or self.directory.name)

    def key(self) -> dict:
        """What stored vectors depend on: the graph, the tokenizer and the length limit."""
        h = hashlib.sha256()
        for name in (self.config.file, "tokenizer.json"):
            h.update((self.directory / name).read_bytes())
        return {"name": self.name, "sha256": h.hexdigest(), "max_length": self.config.max_length}

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """One row per text, in input order (shape ``(len(texts), dim)``, float32)."""
        from tqdm.auto import tqdm

        out = np.zeros((len(texts), self.config.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch([t[:MAX_QUERY_CHARS] for t in texts])
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch: less padding
        bar = tqdm(
            total=len(texts), desc="embedding", unit="product", disable=not progress, leave=False
        )
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = int(lengths[rows].max())
            ids = np.full((len(rows), width), self.config.pad_token_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, r in enumerate(rows):
                e = encodings[r].ids
                ids[i, : len(e)] = e
                mask[i, : len(e)] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            out[rows] = self.session.run(None, feeds)[0]
            bar.update(len(rows))
        bar.close()
        return out
