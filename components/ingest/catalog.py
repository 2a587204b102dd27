"""Robust reading of a Kaggle-style `styles.csv`, repairing rows with unquoted commas.

The original Kaggle file has rows whose free-text column (`productDisplayName`) contains
unquoted commas, so those rows split into too many fields. Such a row is repaired by giving the
extra fields back to the free-text column, never dropped. A row that cannot be repaired (too few
fields) is reported with its line number. Values are read as plain strings: a product literally
named "NA" stays "NA".
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

FREE_TEXT_COLUMN = "productDisplayName"


@dataclass
class CatalogRead:
    """The outcome of reading one styles.csv.

    Attributes:
        columns: the header's column names.
        rows: parsed rows (column -> stripped string), in file order.
        repaired: ids of rows rebuilt from extra fields (unquoted commas in the free text).
        malformed: (line number, reason, raw text) of lines that could not be read as a row.

    """

    columns: list[str]
    rows: list[dict[str, str]] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    malformed: list[tuple[int, str, str]] = field(default_factory=list)


class CatalogError(ValueError):
    """The catalogue file is unusable as a whole (no header, no id column...)."""


def _repair(fields: list[str], n_columns: int, free_index: int) -> list[str]:
    extra = len(fields) - n_columns
    merged = ",".join(fields[free_index : free_index + extra + 1])
    return fields[:free_index] + [merged] + fields[free_index + extra + 1 :]


def read_catalog(text: str, free_text_column: str = FREE_TEXT_COLUMN, id_column: str = "id") -> CatalogRead:
    """Parse styles.csv text into rows, repairing over-long rows.

    Args:
        text: the file's content (UTF-8 decoded).
        free_text_column: the column that absorbs extra fields of an over-long row.
        id_column: the column holding the product id.

    Returns:
        The parsed rows plus what was repaired and what could not be read.

    Raises:
        CatalogError: the header is missing or has no id column.

    """
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration as err:
        raise CatalogError("styles.csv is empty: expected a header line starting with 'id'") from err
    if id_column not in header:
        raise CatalogError(f"styles.csv header has no {id_column!r} column (found: {', '.join(header)})")
    free_index = header.index(free_text_column) if free_text_column in header else len(header) - 1
    out = CatalogRead(columns=header)
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        raw = ",".join(fields)
        repaired = False
        if len(fields) > len(header):
            fields = _repair(fields, len(header), free_index)
            repaired = True
        if len(fields) < len(header):
            out.malformed.append((line, f"{len(fields)} fields, expected {len(header)}", raw))
            continue
        row = {name: value.strip() for name, value in zip(header, fields, strict=True)}
        if not row[id_column]:
            out.malformed.append((line, "empty id", raw))
            continue
        if repaired:
            out.repaired.append(row[id_column])
        out.rows.append(row)
    return out
