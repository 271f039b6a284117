import numpy as np
import pytest
import torch

from reranker.training.evaluate import (
    Judged,
    evaluate,
    gain,
    ndcg_at,
    pair_accuracy,
    rank_order,
)
from reranker.training.losses import (
    ListwiseMarginMSELoss,
    margin_mse_listwise,
    margin_mse_triples,
    student_logits,
)


def test_triples_margin_mse_by_hand():
    s_a, s_b = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    t_a, t_b = torch.tensor([3.0, 0.0]), torch.tensor([1.0, 0.0])
    # margins: student (1, -1), teacher (2, 0) -> errors (-1, -1) -> mean square 1
    assert margin_mse_triples(s_a, s_b, t_a, t_b).item() == pytest.approx(1.0)


def test_listwise_margin_mse_by_hand_with_padding():
    s = torch.tensor([[1.0, 2.0, 4.0], [0.0, 1.0, 99.0]])
    t = torch.tensor([[1.0, 1.0, 1.0], [0.0, 3.0, -7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # list 1 pairs (0,1) (0,2) (1,2): student margins -1 -3 -2, teacher 0 0 0 -> 1, 9, 4
    # list 2 pair (0,1): student -1, teacher -3 -> (2)^2 = 4
    expected = (1 + 9 + 4 + 4) / 4
    assert margin_mse_listwise(s, t, mask).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"must both be \(lists, candidates\)"):
        margin_mse_listwise(s[0], t[0])


@pytest.fixture(scope="module")
def student(tiny_hf_model):
    from sentence_transformers.cross_encoder import CrossEncoder

    return CrossEncoder(str(tiny_hf_model), num_labels=1, max_length=32)


def test_sentence_transformers_margin_mse_is_the_triples_formula(student):
    from sentence_transformers.cross_encoder.losses import MarginMSELoss

    qs, a, b = ["drill", "hose"], ["cordless drill", "garden hose"], ["toilet seat", "drill bit"]
    teacher_margin = torch.tensor([1.5, -0.5])
    loss = MarginMSELoss(student)([qs, a, b], teacher_margin)
    with torch.no_grad():
        s_a = student_logits(student, list(zip(qs, a, strict=True)))
        s_b = student_logits(student, list(zip(qs, b, strict=True)))
    by_hand = (((s_a - s_b) - teacher_margin) ** 2).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_listwise_loss_module_matches_the_formula(student):
    queries = ["drill", "hose"]
    cands = [["cordless drill", "drill bit", "hose reel"], ["garden hose", "toilet seat"]]
    teacher = [[2.0, 1.0, -1.0], [1.5, -2.0]]
    loss = ListwiseMarginMSELoss(student)(queries, cands, teacher)
    with torch.no_grad():
        s1 = student_logits(student, [("drill", c) for c in cands[0]])
        s2 = student_logits(student, [("hose", c) for c in cands[1]])
    terms = []
    for s, t in ((s1, teacher[0]), (s2, teacher[1])):
        for i in range(len(t)):
            for j in range(i + 1, len(t)):
                terms.append(((s[i] - s[j]) - (t[i] - t[j])) ** 2)
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_gain_and_ndcg_by_hand():
    np.testing.assert_allclose(gain(np.array([1.0, 2.0, 3.0])), [0, 2**1.5 - 1, 7])
    # ideal order (3, 1): perfect; reversed: (0 + 7/log2(3)) / 7
    assert ndcg_at([3.0, 1.0], [1.0, 3.0]) == pytest.approx(1.0)
    assert ndcg_at([1.0, 3.0], [1.0, 3.0]) == pytest.approx(1 / np.log2(3))


def test_pair_accuracy_counts_ties_half_and_ignores_close_pairs():
    rel = np.array([3.0, 1.0, 2.8, 1.0])
    scores = np.array([1.0, 0.0, 1.0, 1.0])
    # pairs with |diff| >= 0.5: (0,1) right, (0,3) tie, (1,2) right, (2,3) tie -> (1+.5+1+.5)/4
    assert pair_accuracy(scores, rel) == pytest.approx(0.75)
    assert pair_accuracy(np.array([1.0, 2.0]), np.array([2.0, 2.2])) is None


def test_rank_order_breaks_ties_by_numeric_id():
    assert rank_order([1.0, 1.0, 2.0], ["100010", "99999", "5"]) == [2, 1, 0]


def test_evaluate_uses_only_queries_with_distinct_judgements():
    judged = Judged.from_rows(
        ["a", "a", "b", "b", "c"], ["1", "2", "3", "4", "5"], [3.0, 1.0, 2.0, 2.0, 3.0]
    )
    m = evaluate(
        judged,
        lambda q, ids: np.array([float(i) for i in ids]),
        activation=lambda s: np.full_like(s, 0.5),
    )
    assert (m.queries, m.pair_queries) == (1, 1)
    assert m.pair_accuracy == 0.0  # id 2 (rel 1) scored above id 1 (rel 3)
    assert m.rmse == pytest.approx(1.0)  # predicted 2.0 for judged 3 and 1
