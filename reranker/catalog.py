"""Reading product catalogs (CSV, TSV, JSONL, Parquet) into validated products."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from tqdm.auto import tqdm

from reranker.errors import CatalogError
from reranker.text import product_text

ID_CANDIDATES = ("product_id", "id", "sku", "product_uid", "item_id", "asin")
TITLE_CANDIDATES = ("title", "name", "product_title", "product_name")
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_MAX_LISTED = 5


@dataclass(frozen=True)
class Product:
    """One catalog product: an id, a title and named attribute values (blank ones left out)."""

    id: str
    title: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    def text(self, field_names: Sequence[str] | None = None) -> str:
        """The model text of this product (see :func:`reranker.text.product_text`)."""
        return product_text(self.title, self.fields, field_names)


@dataclass(frozen=True)
class FieldMapping:
    """Which catalog columns hold the id, the title and the attributes.

    ``None`` means: detect (id and title from common names, attributes = every other column).
    """

    id_field: str | None = None
    title_field: str | None = None
    attribute_fields: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SkippedRow:
    row: int  # 1-based data row (header excluded)
    reason: str
    id: str | None = None

    def describe(self) -> str:
        return f"row {self.row}: {self.reason}"


@dataclass(frozen=True)
class Catalog:
    path: str
    format: str
    sha256: str
    id_field: str
    title_field: str
    attribute_fields: tuple[str, ...]
    products: tuple[Product, ...]
    skipped: tuple[SkippedRow, ...]


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CatalogError(
            f"cannot tell the format of {path} from its extension; "
            f"use one of {', '.join(sorted(FORMATS))} or pass --format"
        )
    return fmt


def read_catalog(
    path: str | Path,
    mapping: FieldMapping | None = None,
    *,
    fmt: str | None = None,
    skip_invalid: bool = False,
    progress: bool = False,
) -> Catalog:
    """Read and validate a catalog.

    Rows without an id or a title, duplicate ids and undecodable bytes are errors (one
    :class:`CatalogError` naming the rows) unless ``skip_invalid`` is set, in which case they are
    left out and listed in ``Catalog.skipped``.

    >>> catalog = read_catalog("demo/products.parquet")  # doctest: +SKIP
    """
    mapping = mapping or FieldMapping()
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalog not found: {path}")
    fmt = fmt or detect_format(path)
    if fmt not in set(FORMATS.values()):
        raise CatalogError(f"unknown catalog format {fmt!r}; use csv, tsv, jsonl or parquet")
    raw = path.read_bytes()
    if not raw.strip():
        raise CatalogError(f"catalog is empty: {path}")
    sha256 = hashlib.sha256(raw).hexdigest()

    if fmt == "parquet":
        columns, rows, total = _parquet_rows(path)
    elif fmt == "jsonl":
        columns, rows, total = _jsonl_rows(raw)
    else:
        columns, rows, total = _delimited_rows(raw, "\t" if fmt == "tsv" else ",")
    if not columns:
        raise CatalogError(f"catalog has no columns: {path}")

    id_field = _pick(columns, mapping.id_field, ID_CANDIDATES, "id", "--id-field")
    title_field = _pick(columns, mapping.title_field, TITLE_CANDIDATES, "title", "--title-field")
    if mapping.attribute_fields is None:
        attrs = tuple(c for c in columns if c not in (id_field, title_field))
    else:
        missing = [c for c in mapping.attribute_fields if c not in columns]
        if missing:
            raise CatalogError(
                f"column(s) {', '.join(repr(c) for c in missing)} named by --fields not in "
                f"{path.name}; its columns are: {', '.join(columns)}"
            )
        attrs = tuple(mapping.attribute_fields)

    products: list[Product] = []
    skipped: list[SkippedRow] = []
    first_row: dict[str, int] = {}
    bar = tqdm(rows, total=total, desc="reading catalog", unit="row", disable=not progress)
    for rownum, record in enumerate(bar, start=1):
        if isinstance(record, str):  # a row the reader could not parse; the string says why
            skipped.append(SkippedRow(rownum, record))
            continue
        pid = _clean(record.get(id_field))
        title = _clean(record.get(title_field))
        values = {a: _clean(record.get(a)) for a in attrs}
        bad = [
            name
            for name, v in [(id_field, pid), (title_field, title), *values.items()]
            if v is not None and _undecodable(v)
        ]
        if bad:
            skipped.append(SkippedRow(rownum, f"undecodable bytes in {', '.join(bad)}"))
        elif pid is None:
            skipped.append(SkippedRow(rownum, f"missing id ({id_field})"))
        elif title is None:
            skipped.append(SkippedRow(rownum, f"missing title ({title_field})", pid))
        elif pid in first_row:
            skipped.append(
                SkippedRow(rownum, f"duplicate id {pid!r} (first at row {first_row[pid]})", pid)
            )
        else:
            first_row[pid] = rownum
            products.append(Product(pid, title, {a: v for a, v in values.items() if v is not None}))
    bar.close()

    if skipped and not skip_invalid:
        raise CatalogError(
            f"{path.name}: {len(skipped)} invalid row(s): {describe_skipped(skipped)}; "
            "fix them or pass --skip-invalid to leave them out"
        )
    if not products:
        raise CatalogError(f"catalog has no valid products: {path}")
    return Catalog(
        path=str(path),
        format=fmt,
        sha256=sha256,
        id_field=id_field,
        title_field=title_field,
        attribute_fields=attrs,
        products=tuple(products),
        skipped=tuple(skipped),
    )


def describe_skipped(skipped: Sequence[SkippedRow], limit: int = _MAX_LISTED) -> str:
    text = "; ".join(s.describe() for s in skipped[:limit])
    if len(skipped) > limit:
        text += f"; and {len(skipped) - limit} more"
    return text


def _pick(
    columns: Sequence[str], chosen: str | None, candidates: Iterable[str], what: str, option: str
) -> str:
    if chosen is not None:
        if chosen not in columns:
            raise CatalogError(
                f"column {chosen!r} named by {option} is not in the catalog; "
                f"its columns are: {', '.join(columns)}"
            )
        return chosen
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    raise CatalogError(
        f"no {what} column found (looked for {', '.join(candidates)}); "
        f"name it with {option}; columns are: {', '.join(columns)}"
    )


def _clean(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            value = int(value)
    text = str(value).strip()
    return text or None


def _undecodable(text: str) -> bool:
    # Bytes that are not UTF-8 are decoded with surrogateescape into lone surrogates.
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _delimited_rows(raw: bytes, delimiter: str) -> tuple[list[str], Iterator[dict | str], int]:
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return [], iter(()), 0
    total = text.count("\n")

    def rows() -> Iterator[dict | str]:
        try:
            for values in reader:
                if not any(v.strip() for v in values):
                    continue
                if len(values) > len(header):
                    yield f"{len(values)} fields but the header has {len(header)}"
                    continue
                yield dict(zip(header, values, strict=False))  # short rows: missing values
        except csv.Error as exc:
            raise CatalogError(f"malformed CSV at line {reader.line_num}: {exc}") from None

    return header, rows(), total


def _jsonl_rows(raw: bytes) -> tuple[list[str], list[dict | str], int]:
    lines = [ln for ln in raw.split(b"\n") if ln.strip()]
    columns: dict[str, None] = {}
    records: list[dict | str] = []
    for line in lines:
        try:
            obj = json.loads(line.decode("utf-8", errors="surrogateescape"))
        except json.JSONDecodeError as exc:
            records.append(f"not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            records.append("not a JSON object")
            continue
        columns.update(dict.fromkeys(obj))
        records.append(obj)
    return list(columns), records, len(records)


def _parquet_rows(path: Path) -> tuple[list[str], Iterator[dict], int]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise CatalogError(f"cannot read Parquet file {path}: {str(exc).splitlines()[0]}") from None
    columns = list(pf.schema_arrow.names)

    def rows() -> Iterator[dict]:
        try:
            for batch in pf.iter_batches(batch_size=8192):
                yield from batch.to_pylist()
        except Exception as exc:
            msg = str(exc).splitlines()[0]
            raise CatalogError(f"cannot read Parquet file {path}: {msg}") from None

    return columns, rows(), pf.metadata.num_rows
