"""The serving side of a late-interaction student (ONNX Runtime + ``tokenizers``; no torch).

A late student (trained by ``reranker distill --arch late``; the model is described in
``reranker/training/latebert.py``) is exported as two graphs:

- ``encoder.onnx`` (and ``encoder.int8.onnx``): ``[CLS] text [SEP]`` token ids → states after
  all layers but the last. Run over every product when the catalog is indexed (stored as
  float16 with the index, see :class:`ProductStates`) and over the query, once per query;
- ``joint.onnx`` (and ``joint.int8.onnx``): the last layer at the query's ``[CLS]`` over the
  query's and ``k`` products' states → ``k`` logits.

Per query the work is the query's encoding plus one attention step per candidate, instead of a
whole cross-encoder per candidate. Without stored states (another retriever, or texts sent to the
service) the products are encoded on the fly: correct, but as slow as a cross-encoder.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reranker.crossencoder import MAX_QUERY_CHARS, CrossEncoder, Scores
from reranker.errors import ModelError

STATES_FILE = "product_states.npy"
STATE_OFFSETS_FILE = "product_state_offsets.npy"


class TextEncoder:
    """``[CLS] text [SEP]`` token ids cut to ``max_length`` the way the tokenizer's own
    truncation cuts a single text (special tokens read from the tokenizer; tested against it)."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        a = tokenizer.encode("a", add_special_tokens=False).ids
        ids = list(tokenizer.encode("a").ids)
        i = next(j for j in range(len(ids)) if ids[j : j + len(a)] == a)
        self.prefix = ids[:i]
        self.suffix = ids[i + len(a) :]
        self.budget = max_length - len(self.prefix) - len(self.suffix)
        if self.budget < 1:
            raise ValueError(f"max_length {max_length} leaves no room for text")

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [
            np.asarray(self.prefix + e.ids[: self.budget] + self.suffix, dtype=np.int64)
            for e in encs
        ]


def pad(rows: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token id rows → (ids, mask), both ``(len(rows), longest)`` int64."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def stack_states(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-product states ``(tokens, hidden)`` → padded float32 ``(n, longest, hidden)`` + mask."""
    width = max(len(r) for r in rows)
    out = np.zeros((len(rows), width, rows[0].shape[1]), dtype=np.float32)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return out, mask


class ProductStates:
    """Every product's encoder states for one late model (``key``), float16, stored ragged:
    product ``r`` is ``states[offsets[r]:offsets[r + 1]]``.

    A loaded store reads the rows it is asked for from the file (``os.pread``) instead of mapping
    the file into memory: the operating system's page cache keeps the hot part, and the process's
    resident memory does not grow with every product ever touched (with a memory map it grew by
    ~1.6 MB per 100 random rows here, the kernel mapping whole large folios)."""

    kind = "late-states"

    def __init__(
        self, states: np.ndarray | None, offsets: np.ndarray, key: dict, file=None
    ) -> None:
        self.states = states  # in memory (a store just built), or None (read from ``file``)
        self.offsets = offsets
        self.key = key
        self._file = file  # (fd, data offset in bytes, hidden size, path) of a loaded store

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        hidden = self.states.shape[1] if self.states is not None else self._file[2]
        return int(self.offsets[-1]) * hidden * 2 + int(self.offsets.nbytes)

    def rows(self, rows: Sequence[int]) -> list[np.ndarray]:
        o = self.offsets
        if self.states is not None:
            return [self.states[o[r] : o[r + 1]] for r in rows]
        fd, start, hidden, _ = self._file
        width = hidden * 2
        out = []
        for r in rows:
            a, b = int(o[r]), int(o[r + 1])
            buf = os.pread(fd, (b - a) * width, start + a * width)
            out.append(np.frombuffer(buf, dtype=np.float16).reshape(b - a, hidden))
        return out

    def save(self, directory: Path) -> dict:
        states = (
            self.states if self.states is not None else np.concatenate(self.rows(range(len(self))))
        )
        np.save(directory / STATES_FILE, states, allow_pickle=False)
        np.save(directory / STATE_OFFSETS_FILE, self.offsets, allow_pickle=False)
        return self.key

    @classmethod
    def load(cls, directory: Path, key: dict) -> ProductStates:
        path = directory / STATES_FILE
        header = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
        if header.dtype != np.float16 or header.ndim != 2:
            raise ValueError(f"{path}: expected a 2-d float16 array")
        start, hidden, rows = header.offset, header.shape[1], header.shape[0]
        del header
        offsets = np.load(directory / STATE_OFFSETS_FILE, allow_pickle=False)
        if len(offsets) == 0 or int(offsets[-1]) != rows:
            raise ValueError(f"{path}: {rows} token rows but the offsets say {offsets[-1:]}")
        fd = os.open(path, os.O_RDONLY)
        store = cls(None, offsets, dict(key), (fd, start, hidden, str(path)))
        weakref.finalize(store, os.close, fd)
        return store


class LateCrossEncoder(CrossEncoder):
    """Scores (query, product) pairs with an exported late-interaction student; the same API as
    :class:`~reranker.crossencoder.CrossEncoder`. A product's stored form (what an index keeps,
    :meth:`product_inputs`) is its encoder states instead of its token ids."""

    def __init__(self, model_dir: str | Path, *, cache_size: int = 10_000, **kwargs):
        """``cache_size``: product texts whose states are kept (LRU) for :meth:`product_inputs`,
        so products sent as text again (``/rerank``) are not encoded again; 0 turns it off.
        Other arguments as :class:`~reranker.crossencoder.CrossEncoder`'s."""
        super().__init__(model_dir, **kwargs)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        cfg = self.config
        if cfg.architecture != "late":
            raise ModelError(f"{self.model_dir} is not a late-interaction model")
        enc_path = self.model_dir / cfg.encoder_files[self.variant]
        # The encoder runs just before the joint graph: its idle threads must not spin (busy-wait
        # for more work), or they take the cores from the joint graph (measured: 2x slower).
        self.encoder = self._session(
            enc_path,
            kwargs.get("threads"),
            kwargs.get("session_options"),
            {"session.intra_op.allow_spinning": "0"},
        )
        self.products_enc = TextEncoder(self.tokenizer, cfg.max_length)
        self.queries_enc = TextEncoder(self.tokenizer, self.max_query_tokens)
        self.token_key = {
            "kind": ProductStates.kind,
            "encoder_sha256": hashlib.sha256(enc_path.read_bytes()).hexdigest(),
            "tokenizer_sha256": self.token_key["tokenizer_sha256"],
            "fields": list(cfg.fields),
            "max_length": int(cfg.max_length),
        }

    def _check_inputs(self, path: Path) -> None:
        need = {"query_states", "query_mask", "product_states", "product_mask"}
        if not need <= self.input_names:
            raise ModelError(f"{path} lacks the inputs of a joint graph: {sorted(need)}")

    # ------------------------------------------------------------ encoder
    def query_ids(self, query: str) -> np.ndarray:
        """The query's ids with special tokens, cut to the model's query limit."""
        return self.queries_enc.encode([query[:MAX_QUERY_CHARS]])[0]

    def encode_ids(self, rows: Sequence[np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        """Encoder states (float32, ``(tokens, hidden)``) of token id rows, length-sorted."""
        out: list[np.ndarray] = [None] * len(rows)  # type: ignore[list-item]
        order = np.argsort([len(r) for r in rows], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = pad([rows[i] for i in idx], self.config.pad_token_id)
            states = self.encoder.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            for j, i in enumerate(idx):
                out[i] = states[j, : len(rows[i])]
        return out

    def encode_texts(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encoder states of product texts as an index stores them: float16 ``(tokens, hidden)``."""
        states = self.encode_ids(self.products_enc.encode(texts)) if len(texts) else []
        return [s.astype(np.float16) for s in states]

    def product_inputs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """What this model reads of each product: its encoder states, float16 like stored ones
        (so a product scores the same whether its states come from an index, the cache or are
        computed now). Each distinct text is encoded once; recent ones are cached."""
        out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        missing: dict[str, list[int]] = {}
        with self._cache_lock:
            for i, t in enumerate(texts):
                hit = self._cache.get(t)
                if hit is not None:
                    self._cache.move_to_end(t)
                    out[i] = hit
                else:
                    missing.setdefault(t, []).append(i)
        if missing:
            fresh = self.encode_texts(list(missing))
            with self._cache_lock:
                for (t, rows), s in zip(missing.items(), fresh, strict=True):
                    for i in rows:
                        out[i] = s
                    if self.cache_size:
                        self._cache[t] = s
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out

    def build_store(self, texts: Sequence[str], progress: bool = False, batch: int = 1024):
        """Every product's states, for storing with an index (the slow part of indexing)."""
        from tqdm.auto import tqdm

        parts: list[np.ndarray] = []
        with tqdm(
            total=len(texts), desc="product states", unit="product", disable=not progress
        ) as bar:
            for start in range(0, len(texts), batch):
                chunk = self.encode_texts(texts[start : start + batch])
                parts += chunk
                bar.update(len(chunk))
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        hidden = parts[0].shape[1] if parts else 0
        states = np.concatenate(parts) if parts else np.zeros((0, hidden), dtype=np.float16)
        return ProductStates(states, offsets, self.token_key)

    # ------------------------------------------------------------ scoring
    def score_ids(
        self,
        queries: Sequence[np.ndarray] | np.ndarray,
        products: Sequence[np.ndarray],
        batch_size: int | None = None,
    ) -> Scores:
        """Score pairs given as query ids (:meth:`query_ids`, one for all products or one per
        product) and product states (:meth:`product_inputs`, or rows of stored states)."""
        step = batch_size or self.batch_size
        if isinstance(queries, np.ndarray):
            queries = [queries] * len(products)
        raw = np.zeros(len(products), dtype=np.float32)
        timings = {"tokenize_ms": 0.0, "tensors_ms": 0.0, "inference_ms": 0.0, "post_ms": 0.0}
        self.last_timings = timings
        if not len(products):
            return Scores(raw, raw.copy())
        t0 = time.perf_counter()
        which: dict[bytes, int] = {}  # distinct queries, encoded together in one call
        q_of = np.fromiter(
            (
                which.setdefault(np.asarray(q, dtype=np.int64).tobytes(), len(which))
                for q in queries
            ),
            dtype=np.int64,
            count=len(queries),
        )
        q_states = self.encode_ids([np.frombuffer(k, dtype=np.int64) for k in which])
        t1 = time.perf_counter()
        timings["inference_ms"] += (t1 - t0) * 1e3
        lengths = np.fromiter((len(p) for p in products), dtype=np.int64, count=len(products))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), step):
            t2 = time.perf_counter()
            idx = order[start : start + step]
            p, pm = stack_states([products[i] for i in idx])
            used = np.unique(q_of[idx])
            if len(used) == 1:  # one query for the batch: its keys/values are computed once
                q = q_states[used[0]][None].astype(np.float32, copy=False)
                qm = np.ones((1, len(q[0])), dtype=np.int64)
            else:  # requests merged by the service: a query row per pair
                q, qm = stack_states([q_states[j] for j in q_of[idx]])
            t3 = time.perf_counter()
            logits = self.session.run(
                None, {"query_states": q, "query_mask": qm, "product_states": p, "product_mask": pm}
            )[0]
            t4 = time.perf_counter()
            raw[idx] = np.asarray(logits, dtype=np.float32).reshape(len(idx), -1)[:, 0]
            timings["tensors_ms"] += (t3 - t2) * 1e3
            timings["inference_ms"] += (t4 - t3) * 1e3
        return self._finish(raw, t0, timings)
