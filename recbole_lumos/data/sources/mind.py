"""MIND small (Microsoft News) training split to RecBole atomic files.

``MINDsmall_train.zip`` holds ``behaviors.tsv`` (impression_id, user_id, time such
as ``11/11/2019 9:05:58 AM``, history = space-separated news ids, impressions such
as ``N1-1 N2-0``) and ``news.tsv`` (news_id, category, subcategory, title, abstract,
url, title_entities, abstract_entities), both at the top level.

MIND has impressions, not a timed interaction log, so the interactions are built by
this rule:

1. Every click (an impression entry with label ``1``) is an interaction at the time
   of its impression.
2. A user's click history, taken from the user's earliest behaviors row (it is the
   same in every row of the training split), comes before that: with ``t0`` the
   user's first impression time and ``n`` history items, item ``i`` (0-based, in the
   order listed) gets timestamp ``t0 - n + i`` seconds, so the history keeps its
   order and ends one second before ``t0``.
3. Events are sorted by time (stable) and a (user, item) pair is kept only at its
   first occurrence.

Times are read as UTC. Users appear in order of their first behaviors row. The
``.item`` file lists the news that occur in ``.inter`` (in ``news.tsv`` order).
"""

from __future__ import annotations

import calendar
import zipfile
from datetime import datetime
from pathlib import Path

from recbole_lumos.data.sources.atomic import write_atomic

INTER_COLUMNS = [("user_id", "token"), ("item_id", "token"), ("timestamp", "float")]
ITEM_COLUMNS = [
    ("item_id", "token"),
    ("title", "token_seq"),
    ("category", "token"),
    ("subcategory", "token"),
]
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def parse_time(text: str) -> int:
    """``"11/11/2019 9:05:58 AM"`` -> Unix seconds, read as UTC."""
    return calendar.timegm(datetime.strptime(text.strip(), TIME_FORMAT).timetuple())


def convert_mind(raw_dir: Path, out_dir: Path, name: str, *, archive: str) -> list[Path]:
    """Convert ``MINDsmall_train.zip`` by the module's history + clicks rule."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    with zipfile.ZipFile(raw_dir / archive) as zf:
        behaviors = _read_tsv(zf, "behaviors.tsv")
        news = _read_tsv(zf, "news.tsv")

    # user -> (first time, history of the earliest row); user -> [(time, order, item)]
    first: dict[str, tuple[int, list[str]]] = {}
    clicks: dict[str, list[tuple[int, int, str]]] = {}
    order = 0
    for lineno, fields in enumerate(behaviors, start=1):
        if len(fields) < 5:
            raise ValueError(f"behaviors.tsv line {lineno}: expected 5 fields, got {len(fields)}")
        user, when = fields[1].strip(), parse_time(fields[2])
        history = fields[3].split()
        if user not in first or when < first[user][0]:
            first[user] = (when, history)
        user_clicks = clicks.setdefault(user, [])
        for entry in fields[4].split():
            item, sep, label = entry.rpartition("-")
            if not sep:
                raise ValueError(f"behaviors.tsv line {lineno}: bad impression {entry!r}")
            if label == "1":
                user_clicks.append((when, order, item))
                order += 1

    inter: list[tuple[str, str, int]] = []
    for user, (t0, history) in first.items():
        events = [(t0 - len(history) + i, -1, item) for i, item in enumerate(history)]
        events += sorted(clicks[user])
        seen: set[str] = set()
        for when, _, item in events:
            if item not in seen:
                seen.add(item)
                inter.append((user, item, when))

    used = {row[1] for row in inter}
    items = []
    for fields in news:
        if len(fields) < 4:
            raise ValueError(f"news.tsv: expected at least 4 fields, got {len(fields)}")
        news_id = fields[0].strip()
        if news_id in used:
            used.discard(news_id)  # a repeated id keeps its first row
            items.append((news_id, fields[3], fields[1], fields[2]))
    return [
        write_atomic(out_dir / f"{name}.inter", INTER_COLUMNS, inter),
        write_atomic(out_dir / f"{name}.item", ITEM_COLUMNS, items),
    ]


def _read_tsv(zf: zipfile.ZipFile, basename: str) -> list[list[str]]:
    """Rows of a top-level (or one folder down) TSV member; MIND is UTF-8."""
    names = [n for n in zf.namelist() if n == basename or n.endswith("/" + basename)]
    if not names:
        raise KeyError(f"{basename} not found in {zf.filename}")
    text = zf.read(min(names, key=len)).decode("utf-8")
    return [line.rstrip("\r").split("\t") for line in text.split("\n") if line.strip()]
