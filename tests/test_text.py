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
