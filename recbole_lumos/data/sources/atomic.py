"""A small writer for RecBole atomic files.

RecBole reads atomic files with pandas (tab separator, ``"`` as quote character),
one record per line, with a ``name:type`` header. Free text from the raw sources
(titles, categories) can hold tabs, newlines or a leading double quote, any of which
would shift columns or swallow lines, so every value goes through :func:`format_value`.
Files are written to a temporary sibling and renamed, so a failure never leaves a
half-written atomic file behind.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

#: The field types this package writes (RecBole also knows ``float_seq``).
FIELD_TYPES = frozenset({"token", "token_seq", "float", "float_seq"})


def sanitize_text(value: str) -> str:
    """Collapse every run of whitespace (tabs, newlines, ...) into one space and strip.

    Why: a tab would start a new column and a newline a new record; repeated spaces
    would give empty tokens in a ``token_seq`` field (RecBole splits on one space).
    """
    return " ".join(value.split())


def format_value(value: object) -> str:
    """Render one cell: ``None``/NaN as empty, integral floats without ``.0``, text sanitised."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return ""
        return str(int(value)) if value.is_integer() else repr(value)
    return sanitize_text(str(value))


def format_header(columns: Sequence[tuple[str, str]]) -> str:
    """The header line (without newline): ``name:type`` joined by tabs."""
    for name, ftype in columns:
        if ftype not in FIELD_TYPES:
            raise ValueError(f"unknown atomic field type {ftype!r} for column {name!r}")
        if not name or sanitize_text(name) != name or ":" in name:
            raise ValueError(f"bad atomic column name {name!r}")
    return "\t".join(f"{name}:{ftype}" for name, ftype in columns)


def write_atomic(path: str | Path, columns: list[tuple[str, str]], rows: Iterable[Sequence[object]]) -> Path:
    """Write one atomic file (header + rows) to ``path`` via a temporary file and a rename.

    A cell that starts with a double quote is written CSV-quoted (the quote doubled,
    the cell wrapped in quotes) so pandas, and thus RecBole, reads it back verbatim;
    all other cells are written as they are. Returns ``path``.
    """
    path = Path(path)
    header = format_header(columns)
    width = len(columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(header + "\n")
            for lineno, row in enumerate(rows, start=2):
                if len(row) != width:
                    raise ValueError(f"{path.name} line {lineno}: {len(row)} values for {width} columns")
                fh.write("\t".join(_quote(format_value(v)) for v in row) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _quote(cell: str) -> str:
    """CSV-quote a cell that starts with a double quote (pandas would open a quoted field)."""
    if cell.startswith('"'):
        return '"' + cell.replace('"', '""') + '"'
    return cell


def read_atomic(path: str | Path) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Read an atomic file back as (columns, rows of strings), undoing the quoting.

    Meant for tests and small files; RecBole has its own loader.
    """
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quotechar='"')
        header = next(reader)
        columns = [tuple(h.split(":", 1)) for h in header]
        rows = [list(r) for r in reader]
    return [(c[0], c[1]) for c in columns], rows
