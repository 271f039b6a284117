import random

import numpy as np
import pytest

from reranker.index import BM25Index
from reranker.index.spelling import TermCorrector, max_edits, osa_distance


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [
        ("quater", "quarter", 1),
        ("contorl", "control", 1),  # neighbours swapped: one edit
        ("closit", "closet", 1),
        ("ca", "abc", 3),  # optimal string alignment: a swapped pair is not edited again
        ("", "abc", 3),
        ("same", "same", 0),
    ],
)
def test_osa_distance(a, b, d):
    assert osa_distance(a, b) == d == osa_distance(b, a)


def test_edits_allowed_grow_with_length_as_opensearch_auto():
    assert [max_edits("x" * n) for n in range(1, 9)] == [0, 0, 1, 1, 1, 2, 2, 2]


def test_corrects_unknown_words_only_and_prefers_the_commoner_term():
    fix = TermCorrector({"quarter": 40, "round": 90, "closet": 7, "cloist": 1, "drill": 5, "60": 3})
    assert fix.correct("quater") == ("quarter",)
    assert fix.correct("closit") == ("closet",)  # closet and cloist are both 1 away: more products
    assert TermCorrector({"closet": 1, "cloist": 7}).correct("closit") == ("cloist",)
    assert fix.correct("round") == ()  # known
    assert fix.correct("61") == ()  # numbers are never corrected
    assert fix.correct("dr") == ()  # two letters: no edit allowed
    assert fix.correct("zebra") == ()  # nothing near enough
    assert fix.correct("drll") == ("drill",)


def test_two_words_written_together_are_searched_as_the_two():
    fix = TermCorrector({"wall": 30, "oven": 9, "wal": 1, "loven": 1, "led": 50, "bulb": 40})
    assert fix.correct("walloven") == ("wall", "oven")  # not wal + loven: rarer word rarer
    assert fix.correct("ledbulb") == ("led", "bulb")
    assert fix.correct("ledbulbs") == ()  # "bulbs" is not a catalog word here
    assert fix.correct("wallxoven") == ()  # not two catalog words
    assert fix.correct("leds") == ("led",)  # one edit is nearer than any split


def test_a_word_longer_than_any_known_is_left_alone_without_listing_its_deletions(monkeypatch):
    import reranker.index.spelling as spelling

    listed = []
    real = spelling._deletions
    monkeypatch.setattr(spelling, "_deletions", lambda w, d: listed.append(w) or real(w, d))
    fix = TermCorrector({"wall": 30, "oven": 9})
    fix.prepare()
    listed.clear()
    assert fix.correct("wallovenx") == ()  # 9 letters: beyond 4 + 2 edits and 2 x 4 together
    # a service query may hold one 1,024-letter word: its ~500,000 deletions are never made
    assert fix.correct("q" + "abcdefghij" * 102) == ()
    assert fix.correct("walloven") == ("wall", "oven")  # split, nothing within 2 edits to list
    assert listed == []
    assert fix.correct("wal") == ("wall",) and listed == ["wal"]


def test_the_deletion_table_finds_what_a_full_scan_finds():
    rng = random.Random(7)
    letters = "abcdefgh"
    vocab = {
        "".join(rng.choices(letters, k=rng.randint(1, 9))): rng.randint(1, 50) for _ in range(400)
    }
    fix = TermCorrector(vocab)

    def scan(token):
        if token in vocab:
            return None
        near = [(osa_distance(token, t), -f, t) for t, f in vocab.items()]
        near = [r for r in near if r[0] <= max_edits(token)]
        return min(near)[2] if near else None

    for _ in range(600):
        word = list(rng.choice(list(vocab)))
        for _ in range(rng.randint(0, 3)):  # a few random edits
            i = rng.randrange(len(word) + 1)
            op = rng.choice("isdt")
            if op == "i":
                word.insert(i, rng.choice(letters))
            elif word and i < len(word):
                if op == "s":
                    word[i] = rng.choice(letters)
                elif op == "d":
                    del word[i]
                elif i + 1 < len(word):
                    word[i], word[i + 1] = word[i + 1], word[i]
        token = "".join(word)
        if token:
            near = scan(token)
            got = fix.correct(token)
            assert got == (near,) if near else len(got) in (0, 2), token


def test_index_searches_a_misspelt_word_as_the_nearest_indexed_term(built_index):
    index = BM25Index.load(built_index)
    assert index.query_tokens("gardn hoze 20") == ["garden", "hose", "20"]
    assert index.corrections("Gardn hoze 20") == {"gardn": "garden", "hoze": "hose"}
    assert index.corrections("garden hose") == {}
    assert np.array_equal(index.scores("gardn hoze"), index.scores("garden hose"))
    # words are compared before stemming: "cordles" is one edit from "cordless"; its stem
    # "cordl" would have been one from "cord"
    assert index.tokenizer("cordles") == ["cordl"]
    assert index.query_tokens("cordles") == ["cordless"]
    index.correct_spelling = False
    assert index.query_tokens("gardn hoze") == ["gardn", "hoze"]
    assert not index.scores("gardn hoze").any()


def test_a_server_prepares_the_table_before_the_first_query(built_index):
    from reranker.serve.app import create_app

    index = BM25Index.load(built_index)
    create_app(None, retriever=index)
    assert index._corrector is not None and index._corrector._table is not None
