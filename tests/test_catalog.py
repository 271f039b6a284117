import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reranker.catalog import FieldMapping, read_catalog
from reranker.errors import CatalogError


def write(tmp_path, name, data: bytes | str):
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def test_reads_csv_with_detected_fields(catalog_csv):
    cat = read_catalog(catalog_csv)
    assert len(cat.products) == 30
    assert (cat.id_field, cat.title_field) == ("product_id", "title")
    assert cat.attribute_fields == ("brand", "color", "material")
    first = cat.products[0]
    assert first.id == "p001" and first.fields == {"brand": "DEWALT", "color": "Yellow"}
    assert len(cat.sha256) == 64


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "parquet"])
def test_reads_every_format_to_the_same_products(tmp_path, catalog_csv, fmt):
    ref = read_catalog(catalog_csv)
    rows = [{"product_id": p.id, "title": p.title, **p.fields} for p in ref.products]
    cols = ["product_id", "title", "brand", "color", "material"]
    if fmt == "tsv":
        lines = ["\t".join(cols)] + ["\t".join(r.get(c, "") for c in cols) for r in rows]
        path = write(tmp_path, "c.tsv", "\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path = write(tmp_path, "c.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        path = tmp_path / "c.parquet"
        pq.write_table(pa.table({c: [r.get(c) for r in rows] for c in cols}), path)
    cat = read_catalog(path)
    assert cat.format == fmt
    assert cat.products == ref.products


def test_field_mapping_options(tmp_path):
    path = write(tmp_path, "c.csv", "sku,name,maker,size\nA1,Hammer,Acme,L\n")
    cat = read_catalog(path, FieldMapping("sku", "name", ("size",)))
    assert cat.products[0].fields == {"size": "L"}
    with pytest.raises(
        CatalogError, match=r"column\(s\) 'weight' .*--fields.*columns are: sku, name"
    ):
        read_catalog(path, FieldMapping(attribute_fields=("weight",)))
    with pytest.raises(CatalogError, match=r"column 'code' named by --id-field"):
        read_catalog(path, FieldMapping(id_field="code"))


def test_no_id_column_found(tmp_path):
    path = write(tmp_path, "c.csv", "code,title\nA1,Hammer\n")
    with pytest.raises(CatalogError, match=r"no id column found .*--id-field"):
        read_catalog(path)


BAD = (
    b"product_id,title,brand\nA1,Hammer,Acme\n,No id,Acme\nA3,,Acme\nA1,Hammer again,Acme\n"
) + b"A5,Bad \xff\xfe bytes,Acme\nA6,Saw,Acme\n"


def test_invalid_rows_are_one_error_naming_each_row(tmp_path):
    path = write(tmp_path, "bad.csv", BAD)
    with pytest.raises(CatalogError) as err:
        read_catalog(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "4 invalid row(s)" in msg
    assert "row 2: missing id (product_id)" in msg
    assert "row 3: missing title (title)" in msg
    assert "row 4: duplicate id 'A1' (first at row 1)" in msg
    assert "row 5: undecodable bytes in title" in msg
    assert "--skip-invalid" in msg


def test_skip_invalid_keeps_the_rest_and_lists_what_was_skipped(tmp_path):
    path = write(tmp_path, "bad.csv", BAD)
    cat = read_catalog(path, skip_invalid=True)
    assert [p.id for p in cat.products] == ["A1", "A6"]
    assert [s.row for s in cat.skipped] == [2, 3, 4, 5]


def test_jsonl_bad_lines(tmp_path):
    path = write(tmp_path, "c.jsonl", '{"id": "1", "title": "A"}\nnot json\n[1, 2]\n')
    with pytest.raises(CatalogError, match=r"row 2: not valid JSON.*row 3: not a JSON object"):
        read_catalog(path)
    assert len(read_catalog(path, skip_invalid=True).products) == 1


def test_numeric_ids_become_strings(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"product_id": [100001, 100002], "title": ["A", "B"]}), path)
    assert [p.id for p in read_catalog(path).products] == ["100001", "100002"]


@pytest.mark.parametrize(
    "name,data,match",
    [
        ("empty.csv", "", "catalog is empty"),
        ("blank.jsonl", "\n\n", "catalog is empty"),
        ("header.csv", "product_id,title\n", "no valid products"),
        ("c.xml", "<x/>", "cannot tell the format"),
        ("broken.parquet", "not parquet at all", "cannot read Parquet file"),
    ],
)
def test_unreadable_catalogs(tmp_path, name, data, match):
    with pytest.raises(CatalogError, match=match):
        read_catalog(write(tmp_path, name, data))


def test_missing_catalog(tmp_path):
    with pytest.raises(CatalogError, match="catalog not found"):
        read_catalog(tmp_path / "nope.csv")
