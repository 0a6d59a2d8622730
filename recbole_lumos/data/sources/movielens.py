"""MovieLens 100K and 1M (GroupLens) to RecBole atomic files.

The converters read the original zip archives as GroupLens publishes them
(``ml-100k.zip`` with ``ml-100k/u.data``, ``u.item``, ``u.user``, ``u.genre``;
``ml-1m.zip`` with ``ml-1m/ratings.dat``, ``movies.dat``, ``users.dat``) without
extracting them, and write the layout of RecBole's own MovieLens files:

* ``<name>.inter``: ``user_id rating timestamp``, grouped by user (users in order of
  first appearance in the ratings file) and sorted by timestamp within a user
  (stable, so ties keep file order);
* ``<name>.item``: ``item_id movie_title release_year genre``: the title without its
  trailing ``(YYYY)``, the year taken from that suffix (ml-100k falls back to the
  release date when the title has none), genres space-separated;
* ``<name>.user``: ``user_id age gender occupation zip_code``.

The text files are latin-1 (e.g. ``Misérables, Les (1995)``).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from recbole_lumos.data.sources.atomic import write_atomic

INTER_COLUMNS = [
    ("user_id", "token"),
    ("item_id", "token"),
    ("rating", "float"),
    ("timestamp", "float"),
]
ITEM_COLUMNS = [
    ("item_id", "token"),
    ("movie_title", "token_seq"),
    ("release_year", "token"),
    ("genre", "token_seq"),
]
USER_COLUMNS = [
    ("user_id", "token"),
    ("age", "token"),
    ("gender", "token"),
    ("occupation", "token"),
    ("zip_code", "token"),
]

#: ml-100k genre order, used only when the archive lacks ``u.genre``.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")
ENCODING = "latin-1"


def split_title_year(title: str) -> tuple[str, str]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", "1995")``; no trailing year -> ``(title, "")``."""
    title = title.strip()
    match = _TITLE_YEAR.match(title)
    if match is None or not match.group("title"):
        return title, ""
    return match.group("title"), match.group("year")


def convert_ml_100k(raw_dir: Path, out_dir: Path, name: str, *, archive: str) -> list[Path]:
    """Convert ``ml-100k.zip`` (tab-separated ``u.data``, ``|``-separated ``u.item``/``u.user``)."""
    with zipfile.ZipFile(Path(raw_dir) / archive) as zf:
        ratings = [line.split("\t") for line in _lines(zf, "u.data")]
        genres = _ml100k_genres(zf)
        items = []
        for line in _lines(zf, "u.item"):
            fields = line.split("|")
            if len(fields) < 5 + len(genres):
                raise ValueError(f"u.item: malformed line {line!r}")
            title, year = split_title_year(fields[1])
            if not year:
                date = _DATE_YEAR.search(fields[2])
                year = date.group(1) if date else ""
            flags = fields[5 : 5 + len(genres)]
            genre = " ".join(g for g, flag in zip(genres, flags, strict=False) if flag.strip() == "1")
            items.append((fields[0], title, year, genre))
        users = []
        for line in _lines(zf, "u.user"):
            uid, age, gender, occupation, zip_code = _expect(line.split("|"), 5, "u.user")
            users.append((uid, age, gender, occupation, zip_code))
    inter = [tuple(_expect(r, 4, "u.data")) for r in ratings]
    return _write(out_dir, name, inter, items, users)


def convert_ml_1m(raw_dir: Path, out_dir: Path, name: str, *, archive: str) -> list[Path]:
    """Convert ``ml-1m.zip`` (``::``-separated ``ratings.dat``, ``movies.dat``, ``users.dat``)."""
    with zipfile.ZipFile(Path(raw_dir) / archive) as zf:
        inter = [tuple(_expect(line.split("::"), 4, "ratings.dat")) for line in _lines(zf, "ratings.dat")]
        items = []
        for line in _lines(zf, "movies.dat"):
            mid, raw_title, raw_genres = _expect(line.split("::"), 3, "movies.dat")
            title, year = split_title_year(raw_title)
            genre = " ".join(g for g in raw_genres.split("|") if g.strip())
            items.append((mid, title, year, genre))
        users = []
        for line in _lines(zf, "users.dat"):
            uid, gender, age, occupation, zip_code = _expect(line.split("::"), 5, "users.dat")
            users.append((uid, age, gender, occupation, zip_code))
    return _write(out_dir, name, inter, items, users)


def group_by_user(rows: list[tuple], *, user_col: int = 0, time_col: int = -1) -> list[tuple]:
    """Group rows by user (first-appearance order), each user's rows sorted by time (stable).

    Why: RecBole's sequential split keeps the file order within a user for equal
    timestamps, and readers of the file expect one contiguous block per user.
    """
    by_user: dict[str, list[tuple]] = {}
    for row in rows:
        by_user.setdefault(row[user_col], []).append(row)
    out: list[tuple] = []
    for user_rows in by_user.values():
        user_rows.sort(key=lambda r: float(r[time_col]))
        out.extend(user_rows)
    return out


def _write(out_dir: Path, name: str, inter: list[tuple], items: list[tuple], users: list[tuple]) -> list[Path]:
    out_dir = Path(out_dir)
    return [
        write_atomic(out_dir / f"{name}.inter", INTER_COLUMNS, group_by_user(inter)),
        write_atomic(out_dir / f"{name}.item", ITEM_COLUMNS, items),
        write_atomic(out_dir / f"{name}.user", USER_COLUMNS, users),
    ]


def _member(zf: zipfile.ZipFile, basename: str) -> str:
    """The archive member named ``basename`` at the top level or one folder down."""
    candidates = [n for n in zf.namelist() if n == basename or (n.endswith("/" + basename) and n.count("/") == 1)]
    if not candidates:
        raise KeyError(f"{basename} not found in {zf.filename}")
    return min(candidates, key=len)


def _lines(zf: zipfile.ZipFile, basename: str) -> Iterator[str]:
    """Non-empty lines of a member, decoded as latin-1 (the MovieLens encoding)."""
    text = zf.read(_member(zf, basename)).decode(ENCODING)
    # split("\n"), not splitlines(): latin-1 \x85 is no line break here
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if line.strip():
            yield line


def _ml100k_genres(zf: zipfile.ZipFile) -> tuple[str, ...]:
    try:
        lines = list(_lines(zf, "u.genre"))
    except KeyError:
        return ML100K_GENRES
    pairs = []
    for line in lines:
        genre, _, index = line.rpartition("|")
        pairs.append((int(index), genre))
    return tuple(g for _, g in sorted(pairs))


def _expect(fields: list[str], n: int, what: str) -> list[str]:
    if len(fields) != n:
        raise ValueError(f"{what}: expected {n} fields, got {len(fields)}: {fields!r}")
    return [f.strip() for f in fields]
