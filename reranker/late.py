"""The serving side of a late-interaction student (ONNX Runtime + ``tokenizers``; no torch).

A late student (trained by ``reranker distill --arch late``; the model is described in
``reranker/training/latebert.py``) is exported as two graphs per variant:

- the product encoder (``encoder.onnx``; ``encoder.w8.onnx``: int8-stored weights, float32
  arithmetic): ``[CLS] text [SEP]`` token ids → states after all layers but the last. Run over
  every product when the catalog is indexed (stored as int8 per token with the index, see
  :func:`quantize_states` and :class:`ProductStates`), and over products sent as text;
- the joint graph (``joint.onnx``; ``joint.int8.onnx``): the query's token ids through the same
  first layers, then the last layer at the query's ``[CLS]`` over the query's states and the
  ``k`` products' stored states, packed back to back without padding → ``k`` logits
  (``reranker/training/latejoint.py`` builds it). In ``joint.int8.onnx`` the query's encoder
  runs in dynamic int8 (activations quantised per call); in ``joint.int8-float-query.onnx`` (the
  variant ``int8-float-query``, the shipped ``late`` profile's default) in float32 arithmetic on
  the same int8-stored weights, as the product encoder computes the products: 1.6–3.0 ms more
  per query on an AVX2 CPU, and the shipped late student's pair accuracy within 0.002 of its fp32
  on dev and held-out queries, where dynamic int8 moved it by −0.006 and +0.015
  (``training/REPORT.md``, sixteenth and twentieth sessions).

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
JOINT_INPUTS = (
    "input_ids",
    "attention_mask",
    "product_states",
    "product_scales",
    "token_pair",
    "pair_query",
)
#: the variant whose joint graph computes the query's encoder in float32 arithmetic on its
#: int8-stored weights (as the product encoder computes the products), not in dynamic int8
FLOAT_QUERY = "int8-float-query"
FLOAT_QUERY_FILE = "joint.int8-float-query.onnx"


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


#: Stored states are symmetric int8 per token, shifted by this into uint8 (u8 × s8 kernels).
ZERO_POINT = 128
#: Names of the joint graph's nodes of the attention step over the product tokens start with
#: this (``reranker/training/latejoint.py``; profiles group them by it).
PRODUCTS_SCOPE = "products/"
SCALE_BYTES = 4


def quantize_states(states: np.ndarray) -> np.ndarray:
    """A product's encoder states ``(tokens, hidden)`` float → its stored form: uint8
    ``(tokens, hidden + 4)``, each row the token's states as int8 + :data:`ZERO_POINT` (scale:
    the row's largest magnitude / 127) followed by that scale as little-endian float32 bytes."""
    states = np.asarray(states, dtype=np.float32)
    n, hidden = states.shape
    scale = np.maximum(np.abs(states).max(axis=1, keepdims=True), 1e-12) / 127.0
    out = np.empty((n, hidden + SCALE_BYTES), dtype=np.uint8)
    out[:, :hidden] = np.clip(np.rint(states / scale), -127, 127) + ZERO_POINT
    out[:, hidden:] = scale.astype("<f4").view(np.uint8)
    return out


def split_states(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored rows (:func:`quantize_states`, any number of products back to back) → the joint
    graph's ``product_states`` (uint8 ``(tokens, hidden)``) and ``product_scales`` (``(tokens, 1)``
    float32)."""
    hidden = rows.shape[1] - SCALE_BYTES
    states = np.ascontiguousarray(rows[:, :hidden])
    scales = np.ascontiguousarray(rows[:, hidden:]).view("<f4").astype(np.float32, copy=False)
    return states, scales


def dequantize_states(rows: np.ndarray) -> np.ndarray:
    """Stored rows → the float32 states they stand for ``(tokens, hidden)``."""
    states, scales = split_states(rows)
    return (states.astype(np.float32) - ZERO_POINT) * scales


class ProductStates:
    """Every product's encoder states for one late model (``key``) in their stored form
    (:func:`quantize_states`: uint8 rows of ``hidden + 4`` bytes), ragged: product ``r`` is
    ``states[offsets[r]:offsets[r + 1]]``.

    A loaded store reads the rows it is asked for from the file (``os.pread``) instead of mapping
    the file into memory: the operating system's page cache keeps the hot part, and the process's
    resident memory does not grow with every product ever touched (with a memory map it grew by
    ~1.6 MB per 100 random rows here, the kernel mapping whole large folios)."""

    kind = "late-states-int8"

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
        width = self.states.shape[1] if self.states is not None else self._file[2]
        return int(self.offsets[-1]) * width + int(self.offsets.nbytes)

    def rows(self, rows: Sequence[int]) -> list[np.ndarray]:
        o = self.offsets
        if self.states is not None:
            return [self.states[o[r] : o[r + 1]] for r in rows]
        fd, start, width, _ = self._file
        out = []
        for r in rows:
            a, b = int(o[r]), int(o[r + 1])
            buf = os.pread(fd, (b - a) * width, start + a * width)
            out.append(np.frombuffer(buf, dtype=np.uint8).reshape(b - a, width))
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
        if header.dtype != np.uint8 or header.ndim != 2:
            raise ValueError(f"{path}: expected a 2-d uint8 array")
        start, width, rows = header.offset, header.shape[1], header.shape[0]
        del header
        offsets = np.load(directory / STATE_OFFSETS_FILE, allow_pickle=False)
        if len(offsets) == 0 or int(offsets[-1]) != rows:
            raise ValueError(f"{path}: {rows} token rows but the offsets say {offsets[-1:]}")
        fd = os.open(path, os.O_RDONLY)
        store = cls(None, offsets, dict(key), (fd, start, width, str(path)))
        weakref.finalize(store, os.close, fd)
        return store


class LateCrossEncoder(CrossEncoder):
    """Scores (query, product) pairs with an exported late-interaction student; the same API as
    :class:`~reranker.crossencoder.CrossEncoder`. A product's stored form (what an index keeps,
    :meth:`product_inputs`) is its encoder states instead of its token ids."""

    def __init__(
        self, model_dir: str | Path, *, cache_size: int = 10_000, batch_size: int = 256, **kwargs
    ):
        """``cache_size``: product texts whose states are kept (LRU) for :meth:`product_inputs`,
        so products sent as text again (``/rerank``) are not encoded again; 0 turns it off.
        ``batch_size``: pairs per joint-graph call (their tokens packed into one matrix product;
        more pairs per call keep it large). Other arguments as
        :class:`~reranker.crossencoder.CrossEncoder`'s."""
        super().__init__(model_dir, batch_size=batch_size, **kwargs)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._stored: tuple[ProductStates, dict[str, int]] | None = None  # attach_store
        self.stored_hits = 0  # product texts found in the attached store (not encoded)
        self.encoded_texts = 0  # product texts encoded at query time
        cfg = self.config
        if cfg.architecture != "late":
            raise ModelError(f"{self.model_dir} is not a late-interaction model")
        enc_path = self.model_dir / cfg.encoder_files[self.variant]
        self._encoder_args = (enc_path, kwargs.get("threads"), kwargs.get("session_options"))
        self._encoder = None  # the product encoder's session, made on first use
        self._encoder_lock = threading.Lock()
        self.products_enc = TextEncoder(self.tokenizer, cfg.max_length)
        self.queries_enc = TextEncoder(self.tokenizer, self.max_query_tokens)
        self.token_key = {
            "kind": ProductStates.kind,
            "encoder_sha256": hashlib.sha256(enc_path.read_bytes()).hexdigest(),
            "tokenizer_sha256": self.token_key["tokenizer_sha256"],
            "fields": list(cfg.fields),
            "max_length": int(cfg.max_length),
        }

    def _session(self, onnx_path, threads, session_options, config_entries=None):
        """Either graph may hold int8-stored weights computed in float32 (``DequantizeLinear``
        then ``MatMul``: the product encoder does; a joint graph's query encoder does when made
        with ``requantize --float-prefix``): ``disable_quant_qdq`` lets ONNX Runtime fold them
        into float32 once, at load (the dynamic-int8 kernels are the same with it or without)."""
        entries = {"session.disable_quant_qdq": "1", **(config_entries or {})}
        return super()._session(onnx_path, threads, session_options, entries)

    def _check_inputs(self, path: Path) -> None:
        need = set(JOINT_INPUTS)
        if not need <= self.input_names:
            raise ModelError(
                f"{path} lacks the inputs of a packed joint graph: {sorted(need)}"
                " (a model exported before the packed graph: export it again)"
            )

    # ------------------------------------------------------------ encoder
    @property
    def encoder(self):
        """The product encoder's session (index time, and products sent as text). Loaded on
        first use: a process that serves stored states never holds it. Its weights are stored as
        int8 and computed in float32 (``disable_quant_qdq`` lets ONNX Runtime fold them once);
        its idle threads do not spin, so it does not take the cores from the joint graph when
        both run in one process (with spinning, scoring time doubled)."""
        if self._encoder is None:
            with self._encoder_lock:
                if self._encoder is None:
                    path, threads, opts = self._encoder_args
                    self._encoder = self._session(
                        path,
                        threads,
                        opts,
                        {"session.intra_op.allow_spinning": "0"},
                    )
        return self._encoder

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
        """Encoder states of product texts as an index stores them (:func:`quantize_states`)."""
        states = self.encode_ids(self.products_enc.encode(texts)) if len(texts) else []
        return [quantize_states(s) for s in states]

    def attach_store(self, store: ProductStates, texts: Sequence[str]) -> int:
        """Serve products that arrive as text from ``store`` (states made by ``reranker index``
        for this model; ``texts[r]`` is product ``r``'s model text): a text found there is read,
        not encoded. Texts not found (new or changed products) are encoded as before, so a stale
        store costs time, never correctness. Returns how many distinct texts it holds."""
        if store.key != self.token_key:
            raise ModelError("the stored product states were made for another model")
        if len(store) != len(texts):
            raise ModelError(f"{len(texts)} texts for a store of {len(store)} products")
        self._stored = (store, {t: r for r, t in enumerate(texts)})
        return len(self._stored[1])

    def product_inputs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """What this model reads of each product: its encoder states, quantised like stored ones
        (so a product scores the same whether its states come from an index, the cache or are
        computed now). Texts found in an attached store (:meth:`attach_store`) are read from it;
        each other distinct text is encoded once, and recent ones are cached."""
        out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        missing: dict[str, list[int]] = {}
        if self._stored is not None:
            store, row_of = self._stored
            found = [(i, row_of[t]) for i, t in enumerate(texts) if t in row_of]
            if found:
                for (i, _), s in zip(found, store.rows([r for _, r in found]), strict=True):
                    out[i] = s
                self.stored_hits += len(found)
        with self._cache_lock:
            for i, t in enumerate(texts):
                if out[i] is not None:
                    continue
                hit = self._cache.get(t)
                if hit is not None:
                    self._cache.move_to_end(t)
                    out[i] = hit
                else:
                    missing.setdefault(t, []).append(i)
        if missing:
            fresh = self.encode_texts(list(missing))
            self.encoded_texts += len(missing)
            with self._cache_lock:
                for (t, rows), s in zip(missing.items(), fresh, strict=True):
                    for i in rows:
                        out[i] = s
                    if self.cache_size:
                        self._cache[t] = s
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out

    def _typical_product(self) -> np.ndarray:
        """Stored states of a typical title's size (20 tokens), made up: timing the joint graph
        needs only their shape, and encoding a real text would load the product encoder."""
        shape = next(i.shape for i in self.session.get_inputs() if i.name == "product_states")
        hidden = int(shape[1])
        rng = np.random.default_rng(0)
        return quantize_states(rng.normal(size=(20, hidden)).astype(np.float32))

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
        width = parts[0].shape[1] if parts else 0
        states = np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.uint8)
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
        step, queries, raw, timings = self._begin(queries, products, batch_size)
        if not len(products):
            return Scores(raw, raw.copy())
        t0 = time.perf_counter()
        if len(queries) and all(q is queries[0] for q in queries):  # the usual case: one query
            q_of = np.zeros(len(products), dtype=np.int64)
            distinct = [np.asarray(queries[0], dtype=np.int64)]
        else:  # requests merged by the service: each distinct query once
            which: dict[bytes, int] = {}
            q_of = np.fromiter(
                (
                    which.setdefault(np.asarray(q, dtype=np.int64).tobytes(), len(which))
                    for q in queries
                ),
                dtype=np.int64,
                count=len(queries),
            )
            distinct = [np.frombuffer(k, dtype=np.int64) for k in which]
        q_ids, q_mask = pad(distinct, self.config.pad_token_id)
        lengths = np.fromiter((len(p) for p in products), dtype=np.int64, count=len(products))
        for start in range(0, len(products), step):
            t2 = time.perf_counter()
            stop = min(start + step, len(products))
            states, scales = split_states(np.concatenate(products[start:stop]))
            feeds = {
                "input_ids": q_ids,
                "attention_mask": q_mask,
                "product_states": states,
                "product_scales": scales,
                "token_pair": np.repeat(np.arange(stop - start), lengths[start:stop]),
                "pair_query": q_of[start:stop],
            }
            t3 = time.perf_counter()
            logits = self.session.run(None, feeds)[0]
            t4 = time.perf_counter()
            raw[start:stop] = np.asarray(logits, dtype=np.float32).reshape(stop - start, -1)[:, 0]
            timings["tensors_ms"] += (t3 - t2) * 1e3
            timings["inference_ms"] += (t4 - t3) * 1e3
        return self._finish(raw, t0, timings)
