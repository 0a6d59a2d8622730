"""The views file: written once, appended batch by batch, loaded on every later run.

Format (RecBole atomic style, tab-separated, original tokens)::

    user_id:token	view:token	item_id_list:token_seq
    1	F	50 181 258 ...

one row per user and view (F, R, C, then C2 ... C{n_c} when ``lumos_num_counterfactuals``
is above 1). The name is ``<dataset>-<mode>-<hash>.views``
where the hash covers everything that changes the views: dataset, split settings
(``eval_args``, ``MAX_ITEM_LIST_LENGTH``, filters), model, GGUF file, adapter, mode,
prompt version, views seed (``lumos_views_seed``, by default ``seed``), ``k_f``, ``rho_r``,
``rho_c``, the number of counterfactuals and the embedding settings. It holds no user data,
and nothing derived from validation or test items. A JSON sidecar (``.json``) stores the key
and the statistics.

The number of counterfactuals joins the key only when it is not 1, so every file
written before it existed keeps its name; a file of another ``n_c`` is another file,
and a row of a counterfactual the file's key does not have is an error.

Resuming: rows are appended and flushed after every batch, so an interrupted run
keeps what it wrote. On load a half-written last line is discarded, users without
all their views (F, R and every counterfactual) are dropped (they are generated again,
identically: every draw is seeded by ``(seed, user)``), and complete users are skipped.
Rows already computed are never overwritten; a file that cannot be read is an error
that says to delete it.

Concurrent runs: a process reads, generates and appends while it holds an exclusive
lock on ``<file>.lock`` (:meth:`ViewsFile.locked`, POSIX ``flock``). Two runs of the same
views settings started together (a study with ``--jobs 2``, two seeds sharing
``lumos_views_seed``) would otherwise both generate and both append, leaving every user
twice in the file; the second now waits, then finds every user cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recbole_lumos.errors import AtomicFileError
from recbole_lumos.generation.settings import view_names

logger = logging.getLogger(__name__)

HEADER = "user_id:token\tview:token\titem_id_list:token_seq"


def cache_key(settings: Any, mode: str, generator: Mapping[str, Any], embedding: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that determines the views, as a JSON-able dict (no user data).

    ``num_counterfactuals`` is in it only when it is not 1: the keys (and file names) of
    the three-view files written before it existed stay as they were.
    """
    key: dict[str, Any] = {
        "format": 1,
        "dataset": settings.dataset,
        "split": {
            "eval_args": repr(settings.eval_args),
            "MAX_ITEM_LIST_LENGTH": int(settings.MAX_ITEM_LIST_LENGTH),
            "filters": [list(pair) for pair in settings.data_filters],
        },
        "mode": mode,
        "seed": settings.views_seed,
        "k_f": int(settings.k_f),
        "rho_r": float(settings.rho_r),
        "rho_c": float(settings.rho_c),
        "intent_window": int(settings.lumos_intent_window),
        "far_fraction": float(settings.lumos_far_fraction),
        "item_pool": settings.lumos_item_pool,
        "embedding": dict(embedding),
    }
    if getattr(settings, "lumos_view_space", "text") != "text":  # text keeps the keys written before it existed
        key["view_space"] = settings.lumos_view_space
    num_counterfactuals = int(getattr(settings, "lumos_num_counterfactuals", 1))
    if num_counterfactuals != 1:
        key["num_counterfactuals"] = num_counterfactuals
    if mode == "prompt":
        key["generator"] = dict(generator)
        key["prompt"] = {
            "version": int(settings.lumos_prompt_version),
            "history": int(settings.lumos_prompt_history),
            "candidates": int(settings.lumos_num_candidates),
            "max_new_tokens": int(settings.lumos_max_new_tokens),
        }
    return key


def key_hash(key: Mapping[str, Any]) -> str:
    """The 12 hex digits of the key that name its views file."""
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


class ViewsFile:
    """One views file and its JSON sidecar.

    The views a user must have (``view_names``) follow the key's ``num_counterfactuals``
    (1 when absent), so a file's name and what it must hold cannot disagree.
    """

    def __init__(self, cache_dir: str | Path, dataset: str, mode: str, key: Mapping[str, Any]) -> None:
        self.key = dict(key)
        self.view_names = view_names(int(self.key.get("num_counterfactuals", 1)))
        self.path = Path(cache_dir) / f"{dataset}-{mode}-{key_hash(key)}.views"
        self.sidecar = self.path.with_suffix(".json")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the file's exclusive lock (waiting for another process that holds it, and saying so)."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): one writer at a time is then the user's to ensure
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("views cache %s: another process is writing it; waiting for it", self.path)
                started = time.perf_counter()
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                logger.info("views cache %s: free after %.0f s", self.path, time.perf_counter() - started)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _malformed(self, line_number: int, why: str) -> AtomicFileError:
        return AtomicFileError(
            f"The views cache {self.path} is malformed at line {line_number}: {why}. It was not written by this "
            f"version or was edited or corrupted. Delete it (and {self.sidecar.name}) and run again; the views "
            "are generated anew."
        )

    def load(
        self, users: Collection[str] | None = None, items: Collection[str] | None = None
    ) -> dict[str, dict[str, list[str]]]:
        """Complete users' views from the file (``{}`` if absent), repairing an interrupted tail.

        ``users`` and ``items`` are the dataset's user and item tokens: a row naming
        another user or item means the file belongs to other data (an error).
        """
        if not self.path.is_file():
            return {}
        raw = self.path.read_bytes()
        if not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n") + 1
            logger.warning("views cache %s: discarding a half-written last line (interrupted run)", self.path)
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)
            raw = raw[:cut]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise self._malformed(1, f"it is not UTF-8 text ({error.reason})") from error
        lines = text.split("\n")[:-1] if text else []
        if not lines:
            return {}
        if lines[0] != HEADER:
            raise self._malformed(1, f"the header is {lines[0]!r}, expected {HEADER!r}")
        rows: dict[str, dict[str, list[str]]] = {}
        for number, line in enumerate(lines[1:], start=2):
            cells = line.split("\t")
            if len(cells) != 3:
                raise self._malformed(number, f"{len(cells)} tab-separated cells instead of 3")
            user, view, sequence = cells
            if view not in self.view_names:
                raise self._malformed(number, f"unknown view {view!r} (views are {', '.join(self.view_names)})")
            if users is not None and user not in users:
                raise self._malformed(number, f"user {user!r} is not in this dataset")
            tokens = sequence.split(" ") if sequence else []
            if items is not None:
                unknown = [t for t in tokens if t not in items]
                if unknown:
                    raise self._malformed(number, f"item {unknown[0]!r} is not in this dataset's catalogue")
            if view in rows.setdefault(user, {}):
                raise self._malformed(number, f"a second {view} row for user {user!r}")
            rows[user][view] = tokens
        complete = {u: v for u, v in rows.items() if len(v) == len(self.view_names)}
        if len(complete) < len(rows):
            self._drop_incomplete(lines[0], lines[1:], set(complete))
        return complete

    def _drop_incomplete(self, header: str, body: list[str], complete: set[str]) -> None:
        """Rewrite the file without the rows of users that lack a view (atomic replace)."""
        kept = [line for line in body if line.split("\t", 1)[0] in complete]
        logger.warning(
            "views cache %s: %d rows of users with fewer than %d views removed (interrupted run); they are redone",
            self.path,
            len(body) - len(kept),
            len(self.view_names),
        )
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def append(self, views: Mapping[str, Mapping[str, list[str]]]) -> None:
        """Append complete users (every view of ``view_names``) and flush them to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        lines = [HEADER] if new else []
        for user, user_views in views.items():
            for view in self.view_names:
                lines.append(f"{user}\t{view}\t{' '.join(user_views[view])}")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_sidecar(self) -> dict[str, Any]:
        if not self.sidecar.is_file():
            return {}
        try:
            return json.loads(self.sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("views cache sidecar %s is unreadable; its statistics are rebuilt", self.sidecar)
            return {}

    def write_sidecar(self, stats: Mapping[str, Any], counters: Mapping[str, Any]) -> None:
        """Key, statistics and the running grounding counters (so a resumed run adds to them)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"views": self.path.name, "key": self.key, "stats": dict(stats), "counters": dict(counters)}
        tmp = self.sidecar.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, self.sidecar)
