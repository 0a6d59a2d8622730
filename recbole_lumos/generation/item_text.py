"""Item texts (title, year, genres or categories) read straight from the ``.item`` atomic file.

RecBole loads only the columns of ``load_col`` (user, item and time: see
``properties/overall.yaml``), so the generator reads the item file itself. The texts
are catalogue data: the same for every client, nothing about any user.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recbole_lumos.data.atomic_files import read_header
from recbole_lumos.errors import AtomicFileError

TITLE_COLUMNS = ("title", "movie_title", "name", "item_title")
YEAR_COLUMNS = ("release_year", "year")
GENRE_COLUMNS = ("genre", "class", "categories", "category", "genres")


@dataclass
class ItemTexts:
    """Texts of the catalogue in internal-id order: entry ``i`` is internal item id ``i + 1``."""

    tokens: list[str]
    titles: list[str]
    """Title (with the year in parentheses when the file has one)."""
    genres: list[str]
    """Genres or categories, comma-separated ('' when unknown)."""
    noun: str
    """What the items are, for prompts: 'movies', 'products' or 'items'."""
    source: Path

    @property
    def texts(self) -> list[str]:
        """What is embedded: title (year) and genres."""
        return [f"{t} ({g})" if g else t for t, g in zip(self.titles, self.genres, strict=True)]

    def describe(self, index: int) -> str:
        """One line for a prompt: title (year) [genres]."""
        genre = self.genres[index]
        return f"{self.titles[index]} [{genre}]" if genre else self.titles[index]


def item_file(data_folder: str | Path, dataset: str) -> Path:
    """``<data_path>/<dataset>.item`` (RecBole's ``config['data_path']`` already ends with the dataset)."""
    return Path(data_folder) / f"{dataset}.item"


def read_item_texts(path: Path, item_tokens: Sequence[str], separator: str = "\t") -> ItemTexts:
    """The texts of ``item_tokens`` (internal ids 1..n, in order); an item without a row gets its token as title."""
    if not path.is_file():
        raise AtomicFileError(
            f"The generator needs item titles, but {path} does not exist. Add the dataset's .item atomic file "
            "(a column title:token_seq or movie_title:token_seq), or point --data_path at the folder that holds it."
        )
    header = read_header(path, separator)
    columns = list(header)
    title = _first_present(columns, TITLE_COLUMNS)
    if title is None:
        raise AtomicFileError(
            f"{path} has no title column (its header has {', '.join(f'{k}:{v}' for k, v in header.items())}); "
            f"the generator needs one of {', '.join(TITLE_COLUMNS)}. Add a title:token_seq column to the file."
        )
    item_col = columns[0]
    year, genre = _first_present(columns, YEAR_COLUMNS), _first_present(columns, GENRE_COLUMNS)
    position = {name: i for i, name in enumerate(columns)}
    rows: dict[str, tuple[str, str]] = {}
    with open(path, encoding="utf-8") as handle:
        handle.readline()
        for line in handle:
            cells = line.rstrip("\r\n").split(separator)
            if len(cells) < len(columns):
                cells += [""] * (len(columns) - len(cells))
            text = cells[position[title]].strip()
            if year is not None and cells[position[year]].strip():
                text = f"{text} ({cells[position[year]].strip()})"
            genres = split_categories(cells[position[genre]]) if genre is not None else []
            rows[cells[position[item_col]]] = (text, ", ".join(genres))
    titles, genres = [], []
    for token in item_tokens:
        text, genre = rows.get(token, ("", ""))
        titles.append(text or token)
        genres.append(genre)
    noun = "movies" if title == "movie_title" else "products" if "brand" in header else "items"
    return ItemTexts(list(item_tokens), titles, genres, noun, path)


def split_categories(value: str) -> list[str]:
    """Genres as a list: ``Action Comedy`` (MovieLens) or ``'Beauty', 'Makeup'`` (Amazon)."""
    value = value.strip()
    if not value:
        return []
    if value[0] in "'\"" and value[-1] == value[0]:
        parts = re.split(r"['\"]\s*,\s*['\"]", value[1:-1])
        return list(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if "," in value:
        return [c.strip() for c in value.split(",") if c.strip()]
    return value.split()


def _first_present(columns: Sequence[str], names: Sequence[str]) -> str | None:
    return next((name for name in names if name in columns), None)


def dataset_item_texts(config: Any, dataset: Any) -> ItemTexts:
    """:func:`read_item_texts` for a RecBole config and dataset (internal ids 1..item_num-1)."""
    tokens = [str(t) for t in dataset.field2id_token[dataset.iid_field][1:]]
    path = item_file(config["data_path"], config["dataset"])
    return read_item_texts(path, tokens, config["field_separator"] or "\t")
