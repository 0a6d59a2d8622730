"""Amazon review data (5-core) to RecBole atomic files.

Two releases are supported, both read straight from their gzip files:

* **2014** (McAuley et al., SNAP): ``reviews_<Cat>_5.json.gz`` holds one JSON object
  per line; ``meta_<Cat>.json.gz`` holds one *Python dict literal* per line (single
  quotes, so it needs :func:`ast.literal_eval`, not :mod:`json`), with
  ``categories`` a list of category paths (a list of lists) and ``title`` often
  missing.
* **2018** (Ni et al.): ``<Cat>_5.json.gz`` and ``meta_<Cat>.json.gz`` are both JSON
  lines; ``category`` is one flat list, ``title``/``brand`` may contain HTML and
  ``price`` is a string such as ``"$12.99"``. The 2018 release has no Baby category,
  so there is no ``amazon2018-baby``.

Output (RecBole's Amazon layout):

* ``<name>.inter``: ``user_id`` (reviewerID), ``item_id`` (asin), ``rating``
  (overall), ``timestamp`` (unixReviewTime); grouped by user in order of first
  appearance, sorted by timestamp within a user (stable). Exact duplicate reviews
  (same user, item, rating and time, present in the 2018 files) are kept once.
* ``<name>.item``: ``item_id title categories brand price`` for the items that occur
  in ``.inter`` only (metadata rows of other items are skipped, a repeated asin keeps
  its first row). Categories are flattened in order without repeats and written as
  ``'Beauty', 'Makeup', 'Face'``; missing fields are left empty.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

from recbole_lumos.data.sources.atomic import sanitize_text, write_atomic
from recbole_lumos.data.sources.movielens import group_by_user

INTER_COLUMNS = [
    ("user_id", "token"),
    ("item_id", "token"),
    ("rating", "float"),
    ("timestamp", "float"),
]
ITEM_COLUMNS = [
    ("item_id", "token"),
    ("title", "token_seq"),
    ("categories", "token_seq"),
    ("brand", "token"),
    ("price", "float"),
]

_TAG = re.compile(r"<[^>]*>")
_PRICE = re.compile(r"^\$?\s*(\d[\d,]*(?:\.\d+)?)$")


def convert_amazon(
    raw_dir: Path,
    out_dir: Path,
    name: str,
    *,
    reviews_file: str,
    meta_file: str,
    release: str,
) -> list[Path]:
    """Convert one category's 5-core reviews + metadata (``release`` is ``"2014"`` or ``"2018"``)."""
    if release not in ("2014", "2018"):
        raise ValueError(f"unknown Amazon release {release!r}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    inter = read_reviews(raw_dir / reviews_file)
    wanted = {row[1] for row in inter}
    items = []
    seen: set[str] = set()
    for record in _records(raw_dir / meta_file, python_literal=release == "2014"):
        asin = str(record.get("asin", "")).strip()
        if asin not in wanted or asin in seen:
            continue
        seen.add(asin)
        items.append(_item_row(asin, record, release))
    return [
        write_atomic(out_dir / f"{name}.inter", INTER_COLUMNS, group_by_user(inter)),
        write_atomic(out_dir / f"{name}.item", ITEM_COLUMNS, items),
    ]


def read_reviews(path: Path) -> list[tuple[str, str, float, int]]:
    """(reviewerID, asin, overall, unixReviewTime) per review, exact duplicates dropped."""
    rows: list[tuple[str, str, float, int]] = []
    seen: set[tuple[str, str, float, int]] = set()
    for lineno, record in enumerate(_records(path, python_literal=False), start=1):
        try:
            row = (
                str(record["reviewerID"]).strip(),
                str(record["asin"]).strip(),
                float(record["overall"]),
                int(record["unixReviewTime"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path.name} record {lineno}: bad review ({exc!r})") from exc
        if row not in seen:
            seen.add(row)
            rows.append(row)
    return rows


def format_categories(categories: object) -> str:
    """``[["Beauty", "Makeup"], ["Beauty", "Face"]]`` -> ``'Beauty', 'Makeup', 'Face'``.

    Accepts a flat list (2018) or a list of lists (2014); order kept, repeats dropped.
    """
    flat: list[str] = []
    for entry in categories if isinstance(categories, list) else []:
        for cat in entry if isinstance(entry, list) else [entry]:
            text = sanitize_text(clean_html(str(cat)))
            if text and text not in flat:
                flat.append(text)
    return ", ".join(f"'{c}'" for c in flat)


def parse_price(value: object) -> float | None:
    """A price as float: numbers as they are, ``"$1,299.00"`` parsed, ranges/junk -> None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = _PRICE.match(sanitize_text(str(value)))
    return float(match.group(1).replace(",", "")) if match else None


def clean_html(text: str) -> str:
    """Drop HTML tags and unescape entities (2018 titles carry both)."""
    return html.unescape(_TAG.sub(" ", text))


def _item_row(asin: str, record: dict, release: str) -> tuple[str, str, str, str, float | None]:
    if release == "2014":
        title = str(record.get("title") or "")
        categories = record.get("categories") or []
        brand = str(record.get("brand") or "")
    else:
        title = clean_html(str(record.get("title") or ""))
        categories = record.get("category") or []
        brand = clean_html(str(record.get("brand") or ""))
    return (
        asin,
        title,
        format_categories(categories),
        brand,
        parse_price(record.get("price")),
    )


def _records(path: Path, *, python_literal: bool) -> Iterator[dict]:
    """One dict per non-empty line of a gzip file (JSON, or Python literals for 2014 meta)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = ast.literal_eval(line) if python_literal else json.loads(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
                # Be lenient about which flavour a mirror serves: try the other parser.
                try:
                    record = json.loads(line) if python_literal else ast.literal_eval(line)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise ValueError(f"{path.name} line {lineno}: not a record ({exc})") from exc
            if not isinstance(record, dict):
                raise TypeError(f"{path.name} line {lineno}: not a dict")
            yield record
