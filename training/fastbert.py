"""An inference graph for BERT cross-encoders that computes only what the score needs.

A cross-encoder's score reads one vector: the last layer's output at ``[CLS]``. Every other
position of the last layer is wasted work, so this graph runs the first ``L - 1`` layers as usual
and, in the last layer, computes keys and values for all positions but the query projection,
attention output, feed-forward and layer norms for ``[CLS]`` alone. The result is the same number
as the Hugging Face model's (tested to float tolerance); for a 1-layer student it removes most of
the per-token arithmetic, for an ``L``-layer one about ``(1 - 1/6) / L`` of it.

Only the BERT family (``BertForSequenceClassification``: MiniLM, BERT) is supported; other models
are exported as they are.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def supports(model) -> bool:
    return getattr(model.config, "model_type", None) == "bert" and hasattr(model, "bert")


class ClsOnlyBert(nn.Module):
    """``BertForSequenceClassification`` → logits, with a ``[CLS]``-only last layer."""

    def __init__(self, model) -> None:
        super().__init__()
        if not supports(model):
            raise ValueError("ClsOnlyBert needs a BertForSequenceClassification")
        cfg = model.config
        if cfg.hidden_act != "gelu" or getattr(cfg, "position_embedding_type", "absolute") != (
            "absolute"
        ):
            raise ValueError("ClsOnlyBert supports gelu and absolute positions only")
        self.emb = model.bert.embeddings
        self.layers = model.bert.encoder.layer
        self.pooler = model.bert.pooler
        self.classifier = model.classifier
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (b, n, h*d) -> (b, h, n, d)
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def _attend(self, layer, query_states, states, bias):
        att = layer.attention.self
        q = self._split(att.query(query_states))
        k = self._split(att.key(states))
        v = self._split(att.value(states))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        b, _, n, _ = ctx.shape
        ctx = ctx.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        out = layer.attention.output
        h = out.LayerNorm(out.dense(ctx) + query_states)
        ffn = layer.intermediate.dense(h)
        ffn = nn.functional.gelu(ffn)
        return layer.output.LayerNorm(layer.output.dense(ffn) + h)

    def _attend_cls(self, layer, cls, states, mask):
        """The last layer at [CLS] only. One query position per sequence, so attention is an
        elementwise product and two sums over positions: no transposes, no small matmuls."""
        att = layer.attention.self
        return self._cls_layer(layer, cls, att.key(states), att.value(states), mask)

    def _cls_layer(self, layer, cls, keys, values, mask):
        """The rest of the last layer at [CLS] (``(b, 1, hidden)`` or ``(1, 1, hidden)``), given
        the keys and values ``(b, n, hidden)`` of every position and the mask ``(b, n)``."""
        att = layer.attention.self
        b, n, _ = keys.shape
        q = att.query(cls).view(-1, 1, self.heads, self.head_dim)
        k = keys.view(b, n, self.heads, self.head_dim)
        v = values.view(b, n, self.heads, self.head_dim)
        scores = (q * k).sum(-1) / math.sqrt(self.head_dim)  # (b, n, heads)
        scores = scores + (1.0 - mask[:, :, None].to(keys.dtype)) * torch.finfo(keys.dtype).min
        weights = torch.softmax(scores, dim=1)
        ctx = (weights.unsqueeze(-1) * v).sum(1).reshape(b, 1, self.heads * self.head_dim)
        out = layer.attention.output
        h = out.LayerNorm(out.dense(ctx) + cls)
        ffn = nn.functional.gelu(layer.intermediate.dense(h))
        return layer.output.LayerNorm(layer.output.dense(ffn) + h)

    def forward(self, input_ids, attention_mask, token_type_ids):
        seq = input_ids.shape[1]
        positions = torch.arange(seq, dtype=torch.long, device=input_ids.device).unsqueeze(0)
        e = self.emb
        h = e.word_embeddings(input_ids) + e.token_type_embeddings(token_type_ids)
        h = e.LayerNorm(h + e.position_embeddings(positions))
        bias = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for layer in self.layers[:-1]:
            h = self._attend(layer, h, h, bias)
        cls = self._attend_cls(self.layers[-1], h[:, :1, :], h, attention_mask)[:, 0, :]
        if self.pooler is not None:
            cls = torch.tanh(self.pooler.dense(cls))
        return self.classifier(cls)
