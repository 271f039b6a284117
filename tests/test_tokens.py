"""Pair inputs built from stored token ids must equal what the tokenizer builds from text."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from reranker.crossencoder import CrossEncoder
from reranker.tokens import PairEncoder, ProductTokens

WORDS = "cordless drill hose garden toilet seat white dewalt 20-volt lithium bit set kit".split()


def random_texts(rng, n, max_words):
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(0, max_words)))) for _ in range(n)]


@pytest.mark.parametrize("max_length", [8, 9, 16, 32])
def test_pairs_from_ids_equal_the_tokenizers_pair_encoding(tiny_model, max_length):
    tok = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    enc = PairEncoder(tok, max_length)
    reference = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    reference.no_padding()
    reference.enable_truncation(max_length, strategy="longest_first")
    rng = np.random.default_rng(0)
    # the runtime cuts queries to max_length // 2 tokens before pairing; products may be longer
    queries = [
        q
        for q in random_texts(rng, 400, 12)
        if len(tok.encode(q, add_special_tokens=False).ids) <= max_length // 2
    ][:60]
    texts = random_texts(rng, len(queries), 20)
    firsts = [np.asarray(tok.encode(q, add_special_tokens=False).ids) for q in queries]
    batch = enc.build(firsts, enc.text_ids(texts))
    for row, (q, t) in enumerate(zip(queries, texts, strict=True)):
        ref = reference.encode(q, t)
        n = int(batch.attention_mask[row].sum())
        assert batch.input_ids[row, :n].tolist() == ref.ids, (q, t)
        assert batch.token_type_ids[row, :n].tolist() == ref.type_ids
        assert not batch.attention_mask[row, n:].any()


def test_scores_from_stored_ids_equal_scores_from_text(tiny_model):
    model = CrossEncoder(tiny_model, variant="fp32", batch_size=4)
    rng = np.random.default_rng(1)
    texts = random_texts(rng, 30, 25)
    stored = ProductTokens.build(model.pairs, texts, model.token_key)
    from_ids = model.score_ids(model.query_ids("cordless drill"), stored.rows(range(len(texts))))
    from_text = model.score("cordless drill", texts)
    np.testing.assert_allclose(from_ids.raw, from_text.raw, atol=1e-6)
    assert set(model.last_timings) == {"tokenize_ms", "tensors_ms", "inference_ms", "post_ms"}


def test_stored_ids_round_trip(tmp_path, tiny_model):
    model = CrossEncoder(tiny_model)
    stored = ProductTokens.build(model.pairs, ["drill", "", "garden hose"], model.token_key)
    stored.save(tmp_path)
    back = ProductTokens.load(tmp_path, model.token_key)
    assert [r.tolist() for r in back.rows([2, 1, 0])] == [
        r.tolist() for r in stored.rows([2, 1, 0])
    ]
    assert back.key == model.token_key and len(back) == 3
