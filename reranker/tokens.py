"""Cross-encoder inputs from token ids, and product token ids stored with an index.

A product's text is the same for every query, so its token ids can be computed once, when the
catalog is indexed (as Vespa does for its cross-encoders); a query then tokenises only itself and
the pair is put together by concatenating ids. :class:`PairEncoder` does that concatenation
exactly as the model's ``tokenizers`` pipeline would for a (query, text) pair with longest-first
truncation (special tokens and type ids read from the tokenizer itself; tested against it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IDS_FILE = "product_tokens.npy"
OFFSETS_FILE = "product_token_offsets.npy"


def token_key(tokenizer_json: Path, fields: Sequence[str], max_length: int) -> dict:
    """What stored product ids depend on; a model can use them only when its key is equal."""
    return {
        "tokenizer_sha256": hashlib.sha256(Path(tokenizer_json).read_bytes()).hexdigest(),
        "fields": list(fields),
        "max_length": int(max_length),
    }


@dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray  # (rows, width) int64
    attention_mask: np.ndarray
    token_type_ids: np.ndarray


class PairEncoder:
    """(query ids, product ids) → padded model inputs, the way ``tokenizer.encode(q, t)`` with
    longest-first truncation to ``max_length`` would produce them, for queries of at most
    ``max_length // 2`` tokens (the runtime cuts queries so; product ids are stored cut to the
    pair's text budget, which cannot change the truncation of such pairs)."""

    def __init__(self, tokenizer, max_length: int, pad_token_id: int = 0) -> None:
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer with truncation and padding off
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        a = tokenizer.encode("a", add_special_tokens=False).ids
        b = tokenizer.encode("b", add_special_tokens=False).ids
        pair = tokenizer.encode("a", "b")
        ids, types = list(pair.ids), list(pair.type_ids)
        i = _find(ids, a, 0)
        j = _find(ids, b, i + len(a))
        self.prefix = np.array(ids[:i], dtype=np.int64)
        self.middle = np.array(ids[i + len(a) : j], dtype=np.int64)
        self.suffix = np.array(ids[j + len(b) :], dtype=np.int64)
        self.prefix_types = np.array(types[:i], dtype=np.int64)
        self.middle_types = np.array(types[i + len(a) : j], dtype=np.int64)
        self.suffix_types = np.array(types[j + len(b) :], dtype=np.int64)
        self.first_type = types[i]
        self.second_type = types[j]
        self.specials = len(self.prefix) + len(self.middle) + len(self.suffix)
        self.budget = max_length - self.specials
        if self.budget < 2:
            raise ValueError(f"max_length {max_length} leaves no room for text")

    def text_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of texts without special tokens, cut to what a pair can hold."""
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids[: self.budget], dtype=np.int32) for e in encs]

    def lengths(self, firsts: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kept lengths of each pair's two sides under longest-first truncation (the rule of
        ``tokenizers``: when both sides are too long each keeps half, the second side any odd
        token; otherwise the longer side is cut)."""
        n1 = np.asarray(firsts, dtype=np.int64)
        n2 = np.asarray(seconds, dtype=np.int64)
        t = self.budget
        over = n1 + n2 > t
        short = np.minimum(n1, n2)
        both = short > t // 2
        new_short = np.where(both, t // 2, short)
        new_long = np.where(both, t // 2 + t % 2, t - short)
        swap = n1 > n2
        k1 = np.where(over, np.where(swap, new_long, new_short), n1)
        k2 = np.where(over, np.where(swap, new_short, new_long), n2)
        return k1, k2

    def pair_lengths(self, firsts: Sequence[np.ndarray], seconds: Sequence[np.ndarray]):
        """Total input length of each pair, special tokens included."""
        n1 = np.fromiter((len(x) for x in firsts), dtype=np.int64, count=len(firsts))
        n2 = np.fromiter((len(x) for x in seconds), dtype=np.int64, count=len(seconds))
        k1, k2 = self.lengths(n1, n2)
        return k1 + k2 + self.specials

    def build(self, firsts: Sequence[np.ndarray], seconds: Sequence[np.ndarray]) -> Batch:
        """One padded batch of pairs (firsts[i], seconds[i]): query ids and product ids."""
        n1 = np.fromiter((len(x) for x in firsts), dtype=np.int64, count=len(firsts))
        n2 = np.fromiter((len(x) for x in seconds), dtype=np.int64, count=len(seconds))
        k1, k2 = self.lengths(n1, n2)
        total = k1 + k2 + self.specials
        width = int(total.max()) if len(total) else 0
        rows = len(seconds)
        ids = np.full((rows, width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        types = np.zeros((rows, width), dtype=np.int64)
        pre, mid, suf = len(self.prefix), len(self.middle), len(self.suffix)
        for row in range(rows):
            a, b = int(k1[row]), int(k2[row])
            r, tr = ids[row], types[row]
            r[:pre] = self.prefix
            tr[:pre] = self.prefix_types
            x = pre
            r[x : x + a] = firsts[row][:a]
            tr[x : x + a] = self.first_type
            x += a
            r[x : x + mid] = self.middle
            tr[x : x + mid] = self.middle_types
            x += mid
            r[x : x + b] = seconds[row][:b]
            tr[x : x + b] = self.second_type
            x += b
            r[x : x + suf] = self.suffix
            tr[x : x + suf] = self.suffix_types
            mask[row, : x + suf] = 1
        return Batch(ids, mask, types)


def _find(seq: list[int], sub: list[int], start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    raise ValueError("cannot read the pair template of this tokenizer")


class ProductTokens:
    """Token ids of every product of an index, for one model's tokenizer and fields (``key``)."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, key: dict) -> None:
        self.ids = ids
        self.offsets = offsets
        self.key = key

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, rows: Sequence[int]) -> list[np.ndarray]:
        o = self.offsets
        return [self.ids[o[r] : o[r + 1]] for r in rows]

    @classmethod
    def build(cls, encoder: PairEncoder, texts: Sequence[str], key: dict, batch: int = 4096):
        parts: list[np.ndarray] = []
        for start in range(0, len(texts), batch):
            parts += encoder.text_ids(texts[start : start + batch])
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        return cls(ids.astype(np.int32), offsets, key)

    def save(self, directory: Path) -> dict:
        np.save(directory / IDS_FILE, self.ids, allow_pickle=False)
        np.save(directory / OFFSETS_FILE, self.offsets, allow_pickle=False)
        return self.key

    @classmethod
    def load(cls, directory: Path, key: dict) -> ProductTokens:
        return cls(
            np.load(directory / IDS_FILE, allow_pickle=False),
            np.load(directory / OFFSETS_FILE, allow_pickle=False),
            dict(key),
        )
