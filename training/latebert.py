"""A cross-encoder split in two so that most of its work happens when the catalog is indexed.

A plain cross-encoder runs every layer over ``[CLS] query [SEP] product [SEP]`` for each of the
``k`` candidates of each query. This *late* variant (after PreTTR, MacAvaney et al., SIGIR 2020)
runs the first ``L - 1`` layers of a BERT over the query and over the product *separately*
(each as ``[CLS] text [SEP]`` from position 0, the way a bi-encoder reads it), and only the last
layer jointly, at ``[CLS]`` of the query: its attention reads the keys and values of the query's
and the product's tokens together, then the pooler and the classifier give the score.

The product's ``L - 1`` layer states do not depend on the query, so ``reranker index`` computes
them once per product and stores them; per query the model encodes the query (a few tokens, once)
and for each candidate runs one attention step at ``[CLS]`` over the stored states (the exported
graph does it without computing their keys and values: ``latejoint.py``). It is trained like the
plain student, by margin-MSE on the teacher's scores.

Only the BERT family (``BertForSequenceClassification``: MiniLM, BERT) is supported.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from reranker.training.fastbert import ClsOnlyBert

#: Saved beside the weights of a late student (what the exporter reads).
LATE_FILE = "late_interaction.json"


class LateBert(ClsOnlyBert):
    """``encode`` (the first ``L - 1`` layers over one text) and ``joint`` (the last layer at the
    query's ``[CLS]`` over query and product states) of a ``BertForSequenceClassification``."""

    def __init__(self, model) -> None:
        super().__init__(model)
        if len(self.layers) < 2:
            raise ValueError("a late-interaction student needs at least 2 layers")

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """States after the first ``L - 1`` layers, ``(batch, tokens, hidden)``."""
        seq = input_ids.shape[1]
        positions = torch.arange(seq, dtype=torch.long, device=input_ids.device).unsqueeze(0)
        e = self.emb
        types = torch.zeros_like(input_ids)
        h = e.word_embeddings(input_ids) + e.token_type_embeddings(types)
        h = e.LayerNorm(h + e.position_embeddings(positions))
        bias = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for layer in self.layers[:-1]:
            h = self._attend(layer, h, h, bias)
        return h

    def joint(
        self,
        query_states: torch.Tensor,
        query_mask: torch.Tensor,
        product_states: torch.Tensor,
        product_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``(pairs, 1)`` for pairs of (query, product) states given row by row; a
        single query row (``(1, nq, hidden)``) is shared by every product, and then its keys and
        values are computed once."""
        last = self.layers[-1]
        att = last.attention.self
        b = product_states.shape[0]
        k = torch.cat([att.key(query_states).expand(b, -1, -1), att.key(product_states)], dim=1)
        v = torch.cat([att.value(query_states).expand(b, -1, -1), att.value(product_states)], dim=1)
        mask = torch.cat([query_mask.expand(b, -1), product_mask], dim=1)
        cls = self._cls_layer(last, query_states[:, :1, :], k, v, mask)[:, 0, :]
        if self.pooler is not None:
            cls = torch.tanh(self.pooler.dense(cls))
        return self.classifier(cls)

    def forward(self, query_ids, query_mask, product_ids, product_mask):
        """Training/reference path: ``query_*`` ``(pairs, nq)``, ``product_*`` ``(pairs, np)``."""
        return self.joint(
            self.encode(query_ids, query_mask),
            query_mask,
            self.encode(product_ids, product_mask),
            product_mask,
        )


class EncoderGraph(nn.Module):
    """What is exported as ``encoder.onnx``: token ids → states after ``L - 1`` layers."""

    def __init__(self, late: LateBert) -> None:
        super().__init__()
        self.late = late

    def forward(self, input_ids, attention_mask):
        return self.late.encode(input_ids, attention_mask)


class LateStudent:
    """A late-interaction student being trained: Hugging Face weights, tokenizer, and
    :class:`LateBert` over them. Products are cut to ``max_length`` tokens, queries to
    ``query_max_length`` (special tokens included in both)."""

    def __init__(
        self, path: str, layers: int | None, max_length: int, query_max_length: int
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from reranker.training.teacher import keep_layers

        self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        if layers is not None:
            keep_layers(self.model, layers)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.late = LateBert(self.model)
        self.max_length = max_length
        self.query_max_length = query_max_length

    def parameters(self):
        return self.model.parameters()

    def train(self) -> None:
        self.model.train()

    def _tokens(self, texts: list[str], max_length: int):
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )

    def logits(self, queries: list[str], products: list[list[str]]) -> torch.Tensor:
        """Logits of every (queries[i], products[i][j]), list after list; each query is encoded
        once for all its products."""
        q = self._tokens(list(queries), self.query_max_length)
        p = self._tokens([t for texts in products for t in texts], self.max_length)
        rows = torch.repeat_interleave(
            torch.arange(len(queries)), torch.tensor([len(t) for t in products])
        )
        q_states = self.late.encode(q["input_ids"], q["attention_mask"])
        p_states = self.late.encode(p["input_ids"], p["attention_mask"])
        return self.late.joint(
            q_states[rows], q["attention_mask"][rows], p_states, p["attention_mask"]
        ).view(-1)

    def save(self, out) -> None:
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        (Path(out) / LATE_FILE).write_text(
            json.dumps(
                {"max_length": self.max_length, "query_max_length": self.query_max_length},
                indent=2,
            )
        )
