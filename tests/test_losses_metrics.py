import json

import numpy as np
import pytest
import torch

from reranker.errors import DataError
from reranker.training.evaluate import (
    Judged,
    end_to_end_ndcg,
    evaluate,
    gain,
    ndcg_at,
    pair_accuracy,
    rank_order,
    write_per_query,
)
from reranker.training.losses import (
    ListwiseMarginMSELoss,
    listwise_kl,
    margin_mse_listwise,
    margin_mse_triples,
    student_logits,
)
from reranker.training.paired import compare, main, read_per_query


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


def test_listwise_kl_by_hand_with_padding():
    s = torch.tensor([[0.0, 1.0, 5.0], [2.0, 0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0, -9.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    temp = 0.5

    def kl(sv, tv):
        p = torch.softmax(torch.tensor(tv) / temp, 0)
        q = torch.softmax(torch.tensor(sv) / temp, 0)
        return (p * (p.log() - q.log())).sum() * temp**2

    expected = (kl([0.0, 1.0], [1.0, 0.0]) + kl([2.0, 0.0], [0.0, 0.0])) / 2
    assert listwise_kl(s, t, mask, temp).item() == pytest.approx(expected.item(), rel=1e-5)
    # the padded third candidate takes no probability: its scores change nothing
    s2, t2 = s.clone(), t.clone()
    s2[:, 2], t2[:, 2] = -40.0, 40.0
    assert listwise_kl(s2, t2, mask, temp).item() == pytest.approx(expected.item(), rel=1e-5)
    assert listwise_kl(t, t, mask, temp).item() == pytest.approx(0.0, abs=1e-7)
    # a shift of a list's scores changes no softmax
    assert listwise_kl(s + 3.0, t, mask, temp).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        listwise_kl(s, t, mask, 0.0)
    with pytest.raises(ValueError, match="no list in the batch has two"):
        listwise_kl(s[:, :1], t[:, :1])


def test_listwise_kl_at_a_high_temperature_is_a_centred_mse():
    # KL * T^2 -> sum_i (d_i - mean d)^2 / (2 n) for d = s - t, as T grows
    s = torch.tensor([[0.3, -0.2, 0.9, 0.1]], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.4, 0.5, -0.3]], dtype=torch.float64)
    d = s - t
    centred = ((d - d.mean()) ** 2).sum() / (2 * d.shape[1])
    assert listwise_kl(s, t, temperature=1e3).item() == pytest.approx(centred.item(), rel=1e-3)


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
    kl = ListwiseMarginMSELoss(student, temperature=0.5)(queries, cands, teacher)
    padded = torch.stack([s1, torch.cat([s2, s2.new_zeros(1)])])
    t = torch.tensor([teacher[0], teacher[1] + [0.0]])
    mask = torch.tensor([[True] * 3, [True, True, False]])
    assert kl.item() == pytest.approx(listwise_kl(padded, t, mask, 0.5).item(), rel=1e-5)


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


def _per_query(judged, scorer, search):
    rows: dict = {}
    evaluate(judged, scorer, per_query=rows)
    end_to_end_ndcg(judged, search, per_query=rows)
    return rows


def test_per_query_figures_average_to_the_metrics_and_compare_query_by_query(tmp_path, capsys):
    judged = Judged.from_rows(
        ["a", "a", "a", "b", "b", "c", "c"],
        ["1", "2", "3", "4", "5", "6", "7"],
        [3.0, 1.0, 2.0, 2.5, 2.0, 3.0, 2.8],  # c: no pair 0.5 apart to order
    )
    high_id_first = lambda q, ids: np.array([float(i) for i in ids])  # noqa: E731
    low_id_first = lambda q, ids: -high_id_first(q, ids)  # noqa: E731
    ids = {q: v[0] for q, v in judged.queries.items()}  # ascending
    new = _per_query(judged, low_id_first, lambda q: ids[q])
    old = _per_query(judged, high_id_first, lambda q: ids[q][::-1])
    m = evaluate(judged, low_id_first)
    assert sorted(new) == ["a", "b", "c"] and new["c"]["pair_accuracy"] is None
    assert np.mean([r["ndcg10"] for r in new.values()]) == pytest.approx(m.ndcg10)
    accs = [r["pair_accuracy"] for r in new.values() if r["pair_accuracy"] is not None]
    assert np.mean(accs) == pytest.approx(m.pair_accuracy)
    assert new["a"]["e2e_ndcg10"] == pytest.approx(new["a"]["ndcg10"])

    write_per_query(tmp_path / "new.parquet", new)
    write_per_query(tmp_path / "old.parquet", old)
    assert read_per_query(tmp_path / "new.parquet") == new  # float64 round trip
    result = compare(
        read_per_query(tmp_path / "new.parquet"), read_per_query(tmp_path / "old.parquet")
    )
    # pair accuracy on the two queries with a pair to order only
    assert result["pair_accuracy"]["queries"] == 2
    gains = [new[q]["pair_accuracy"] - old[q]["pair_accuracy"] for q in ("a", "b")]
    assert result["pair_accuracy"]["mean"] == pytest.approx(np.mean(gains))
    assert result["ndcg10"]["queries"] == 3 and result["e2e_ndcg10"]["queries"] == 3
    lo, hi = result["ndcg10"]["ci95"]
    assert lo <= result["ndcg10"]["mean"] <= hi

    main(
        [
            str(tmp_path / "new.parquet"),
            str(tmp_path / "old.parquet"),
            "--json",
            str(tmp_path / "d.json"),
        ]
    )
    assert "pair_accuracy" in capsys.readouterr().out
    assert json.loads((tmp_path / "d.json").read_text())["ndcg10"]["queries"] == 3
    with pytest.raises(SystemExit, match="cannot read"):
        main([str(tmp_path / "new.parquet"), str(tmp_path / "missing.parquet")])

    del old["c"]
    with pytest.raises(DataError, match="different queries"):
        compare(new, old)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read"):
        read_per_query(tmp_path / "bad.parquet")
