from reranker.text import BM25Tokenizer, product_text, searchable_text


def test_product_text_title_first_then_labelled_fields_in_order():
    fields = {"color": "Red", "brand": "Acme", "material": None}
    assert product_text("Drill", fields, ["brand", "color", "material"]) == (
        "Drill | brand: Acme | color: Red"
    )
    assert product_text("Drill", fields) == "Drill | color: Red | brand: Acme"
    assert product_text("  Drill ", {}, ["brand"]) == "Drill"


def test_searchable_text_has_values_without_labels():
    assert searchable_text("Drill", {"brand": "Acme", "color": None}) == "Drill Acme"


def test_bm25_tokenizer_lowercases_alphanumeric_runs_and_round_trips_settings():
    tok = BM25Tokenizer()
    assert tok("DEWALT 20-Volt MAX, 1/2 in.") == ["dewalt", "20", "volt", "max", "1", "2", "in"]
    again = BM25Tokenizer.from_settings(tok.settings())
    assert again("A-b") == ["a", "b"]


def test_bm25_tokenizer_keeps_numbers_apart_from_units_and_older_indexes_their_pattern():
    tok = BM25Tokenizer()
    assert tok("60W LED, 18V drill, 2x4") == ["60", "w", "led", "18", "v", "drill", "2", "x", "4"]
    assert tok("60 watt")[0] == tok("60W")[0] == "60"
    older = BM25Tokenizer.from_settings({**tok.settings(), "pattern": "[a-z0-9]+"})
    assert older("60W LED") == ["60w", "led"]
    assert tok.words("Drills, 60W") == ["drills", "60", "w"] and tok.stem("drills") == "drill"


def test_bm25_tokenizer_stems_with_snowball_english_by_default():
    tok = BM25Tokenizer()
    assert tok("Cordless Drills, elongated Toilet Seats") == [
        "cordless",
        "drill",
        "elong",
        "toilet",
        "seat",
    ]
    assert tok("drill") == tok("drills") == tok("drilling")
    assert BM25Tokenizer.from_settings(tok.settings())("Seats") == ["seat"]


def test_bm25_tokenizer_without_stemmer_and_settings_of_older_indexes():
    assert BM25Tokenizer(stemmer=None)("Drills") == ["drills"]
    older = BM25Tokenizer.from_settings({"pattern": "[a-z0-9]+", "lowercase": True})
    assert older.stemmer is None and older("Drills") == ["drills"]


def test_bm25_tokenizer_unknown_stemmer_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="no Snowball stemmer for 'klingon'; one of: .*english"):
        BM25Tokenizer(stemmer="klingon")
