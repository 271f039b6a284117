"""Margin-MSE losses for cross-encoder distillation.

The student learns the teacher's *margin* between two products of the same query:
``((s(q,a) - s(q,b)) - (t(q,a) - t(q,b)))**2``, averaged.

- Triples ``(q, a, b)``: sentence-transformers' ``MarginMSELoss`` (used as is by ``distill``);
  :func:`margin_mse_triples` is the same formula on score tensors.
- All pairs of a query's candidate list (the paper's variant): :func:`margin_mse_listwise` and
  :class:`ListwiseMarginMSELoss`, averaged over every pair ``i < j`` of every list in the batch.

Not margin-MSE: :func:`listwise_kl`, the KL divergence from the teacher's softmax over a list to
the student's, both at a temperature (ListNet with soft targets). A low temperature puts the
weight on the top of each list, where NDCG@10 looks; as the temperature grows it tends to a
centred MSE, close to all-pairs margin-MSE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def margin_mse_triples(s_a: Tensor, s_b: Tensor, t_a: Tensor, t_b: Tensor) -> Tensor:
    """Mean of ``((s_a - s_b) - (t_a - t_b))**2`` over the batch."""
    return torch.mean(((s_a - s_b) - (t_a - t_b)) ** 2)


def margin_mse_listwise(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over all pairs ``i < j`` of valid candidates of each list of
    ``((s_i - s_j) - (t_i - t_j))**2``.

    ``student`` and ``teacher`` are ``(lists, candidates)``; ``mask`` marks real (not padded)
    candidates. Lists with fewer than two candidates contribute nothing.
    """
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"student and teacher scores must both be (lists, candidates); got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if mask is None:
        mask = torch.ones_like(student, dtype=torch.bool)
    ds = student.unsqueeze(2) - student.unsqueeze(1)
    dt = teacher.unsqueeze(2) - teacher.unsqueeze(1)
    n = student.shape[1]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=student.device), diagonal=1)
    valid = mask.unsqueeze(2) & mask.unsqueeze(1) & upper
    if not valid.any():
        raise ValueError("no list in the batch has two candidates to compare")
    return ((ds - dt) ** 2)[valid].mean()


def listwise_kl(
    student: Tensor, teacher: Tensor, mask: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """Mean over lists of ``KL(softmax(teacher / T) || softmax(student / T)) * T**2``.

    Shapes as :func:`margin_mse_listwise`; padded candidates (``mask`` false) take no
    probability, and lists with fewer than two candidates contribute nothing. The ``T**2`` keeps
    the gradient's size comparable across temperatures (Hinton et al., 2015).
    """
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"student and teacher scores must both be (lists, candidates); got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"the temperature must be positive, not {temperature}")
    if mask is None:
        mask = torch.ones_like(student, dtype=torch.bool)
    rows = mask.sum(dim=1) >= 2
    if not rows.any():
        raise ValueError("no list in the batch has two candidates to compare")
    dtype = torch.promote_types(student.dtype, torch.float32)  # bf16 logits: in fp32
    s, t, m = student[rows].to(dtype), teacher[rows].to(dtype), mask[rows]
    neg = torch.finfo(s.dtype).min
    log_q = torch.log_softmax((s / temperature).masked_fill(~m, neg), dim=1)
    log_p = torch.log_softmax((t / temperature).masked_fill(~m, neg), dim=1)
    kl = (log_p.exp() * (log_p - log_q)).masked_fill(~m, 0.0).sum(dim=1)
    return kl.mean() * temperature**2


class ListwiseMarginMSELoss(nn.Module):
    """All-pairs margin-MSE (or, with ``temperature``, :func:`listwise_kl`) for a
    sentence-transformers ``CrossEncoder`` with one label.

    ``forward(queries, candidates, teacher_scores)``: one query per list, its candidate texts and
    the teacher's scores for them (lists may differ in length).
    """

    def __init__(self, model, temperature: float | None = None) -> None:
        super().__init__()
        self.temperature = temperature
        if getattr(model, "num_labels", 1) != 1:
            raise ValueError(
                f"ListwiseMarginMSELoss needs a model with 1 output label, got {model.num_labels}; "
                "create the student with num_labels=1"
            )
        self.model = model

    def forward(
        self,
        queries: Sequence[str],
        candidates: Sequence[Sequence[str]],
        teacher_scores: Sequence[Sequence[float]],
    ) -> Tensor:
        if not (len(queries) == len(candidates) == len(teacher_scores)):
            raise ValueError("queries, candidates and teacher_scores must have the same length")
        for row, (docs, ts) in enumerate(zip(candidates, teacher_scores, strict=True)):
            if len(docs) != len(ts):
                raise ValueError(f"list {row}: {len(docs)} candidates but {len(ts)} teacher scores")
        pairs = [(q, d) for q, docs in zip(queries, candidates, strict=True) for d in docs]
        logits = student_logits(self.model, pairs)
        return listwise_packed(logits, teacher_scores, self.temperature)


def listwise_packed(
    logits: Tensor, teacher_scores: Sequence[Sequence[float]], temperature: float | None = None
) -> Tensor:
    """A list loss for the student's logits of all lists one after another
    (``logits[0:len(list 0)]`` are list 0's, and so on) and the teacher's scores per list:
    :func:`margin_mse_listwise`, or with a ``temperature`` :func:`listwise_kl`."""
    width = max(len(ts) for ts in teacher_scores)
    n = len(teacher_scores)
    s = logits.new_zeros((n, width))
    t = logits.new_zeros((n, width))
    mask = torch.zeros((n, width), dtype=torch.bool, device=logits.device)
    pos = 0
    for row, ts in enumerate(teacher_scores):
        s[row, : len(ts)] = logits[pos : pos + len(ts)]
        t[row, : len(ts)] = torch.as_tensor(ts, dtype=logits.dtype)
        mask[row, : len(ts)] = True
        pos += len(ts)
    if pos != len(logits):
        raise ValueError(f"{len(logits)} student logits but {pos} teacher scores")
    if temperature is not None:
        return listwise_kl(s, t, mask, temperature)
    return margin_mse_listwise(s, t, mask)


def student_logits(model, pairs: Sequence[tuple[str, str]]) -> Tensor:
    """Raw one-label logits of a sentence-transformers CrossEncoder for (query, text) pairs."""
    from sentence_transformers.util import batch_to_device

    features = batch_to_device(model.preprocess(list(pairs)), model.device)
    return model(features)["scores"].view(-1)
