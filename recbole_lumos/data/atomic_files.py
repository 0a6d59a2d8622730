"""Checks on a dataset's atomic files before RecBole reads them.

RecBole reports a missing dataset by trying its (dead) download mirror, a bad
header or a missing column with a ``KeyError`` deep in pandas, and a value that is
not a number in a ``float`` column (a timestamp) with a pandas traceback naming
neither file nor line. These checks run first and say what is wrong, where (file,
line, column) and how to fix it. :func:`data_fingerprint` records which files a run
read (path, size, SHA-256) for its result JSON.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import pandas as pd
from recbole.config import Config

from recbole_lumos.data.sources import prepare_dataset
from recbole_lumos.errors import AtomicFileError

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


def read_header(path: Path, separator: str = "\t") -> dict[str, str]:
    """Column name -> type from an atomic file's first line, or :class:`AtomicFileError`."""
    with open(path, encoding="utf-8") as handle:
        first = handle.readline().rstrip("\r\n")
    columns: dict[str, str] = {}
    for position, cell in enumerate(first.split(separator), start=1):
        name, sep, kind = cell.partition(":")
        if not sep or not name or kind not in FIELD_TYPES:
            raise AtomicFileError(
                f"The header of {path} is malformed: column {position} is {cell!r}, but every "
                f"column must be written name:type with type one of {', '.join(FIELD_TYPES)} "
                "and columns separated by tabs (for example 'user_id:token\titem_id:token\t"
                "timestamp:float'). Fix the first line of the file and run again."
            )
        columns[name] = kind
    return columns


def ensure_dataset(config: Config) -> Path:
    """Make sure the dataset's atomic files exist and are usable; return their folder.

    Missing files are downloaded and converted from the original source when a
    converter exists and the network answers; otherwise :func:`prepare_dataset`
    raises a :class:`~recbole_lumos.errors.DatasetNotFoundError` that says which
    files to place where.
    """
    name = config["dataset"]
    folder = Path(config["data_path"])
    if not (folder / f"{name}.inter").is_file():
        prepare_dataset(name, folder.parent)
    check_columns(config, folder)
    check_values(config, folder)
    return folder


def _loaded_files(config: Config, folder: Path) -> list[tuple[Path, str, list[str] | None]]:
    """``(path, suffix, columns RecBole loads or None for all)`` of the atomic files RecBole will read."""
    name = config["dataset"]
    load_col = config["load_col"]
    files = []
    for suffix in ("inter", "user", "item"):
        path = folder / f"{name}.{suffix}"
        if not path.is_file():
            continue
        if load_col is None:
            files.append((path, suffix, None))
        elif suffix in load_col:
            files.append((path, suffix, list(load_col[suffix])))
    return files


def check_values(config: Config, folder: Path) -> None:
    """Every value of a ``float`` column RecBole loads is a number (or empty, which RecBole fills).

    A bad value raises an :class:`AtomicFileError` naming the file, the line (1-based, the
    header is line 1), the column and the value.
    """
    separator = config["field_separator"] or "\t"
    encoding = config["encoding"] or "utf-8"
    for path, _, columns in _loaded_files(config, folder):
        header = read_header(path, separator)
        names = list(header)
        floats = [c for c, kind in header.items() if kind == "float" and (columns is None or c in columns)]
        if not floats:
            continue
        table = pd.read_csv(
            path,
            sep=separator,
            usecols=[f"{c}:float" for c in floats],
            dtype=str,
            encoding=encoding,
            keep_default_na=False,
            quoting=csv.QUOTE_NONE,
            engine="c",
        )
        for column in floats:
            text = table[f"{column}:float"].str.strip()
            numbers = pd.to_numeric(text, errors="coerce")
            bad = numbers.isna() & (text != "")
            if bad.any():
                rows = bad.to_numpy().nonzero()[0]
                first = int(rows[0])
                more = f" ({len(rows) - 1} more lines have the same problem)" if len(rows) > 1 else ""
                raise AtomicFileError(
                    f"{path}, line {first + 2}, column {names.index(column) + 1} ({column}:float): "
                    f"{table[f'{column}:float'].iloc[first]!r} is not a number{more}. A float column holds "
                    f"numbers only (a timestamp is a Unix time in seconds, e.g. 881250949). Fix or delete that "
                    f"line, or declare the column {column}:token if it is not numeric, and run again."
                )


def data_fingerprint(config: Config) -> dict[str, Any]:
    """The folder a run reads and, for each of its atomic files, the size and SHA-256:
    ``{"path": ..., "files": {"ml-100k.inter": {"bytes": ..., "sha256": ...}, ...}}``."""
    folder = Path(config["data_path"]).resolve()
    files = {}
    for path in sorted(folder.glob(f"{config['dataset']}.*")):
        if not path.is_file():
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        files[path.name] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    return {"path": str(folder), "files": files}


def check_columns(config: Config, folder: Path) -> None:
    """Every column RecBole will need exists in the header of the file that should hold it."""
    name = config["dataset"]
    separator = config["field_separator"] or "\t"
    load_col = config["load_col"] or {}
    required = {"inter": [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]]}
    order = (config["eval_args"] or {}).get("order")
    if order == "TO" and config["TIME_FIELD"]:
        required["inter"].append(config["TIME_FIELD"])
    for suffix, columns in load_col.items():
        required.setdefault(suffix, [])
        required[suffix] += [c for c in columns if c not in required[suffix]]
    for suffix, columns in required.items():
        path = folder / f"{name}.{suffix}"
        if not path.is_file():
            raise AtomicFileError(
                f"load_col asks for columns {columns} from {path}, but that file does not "
                f"exist. Add the file, or remove '{suffix}' from load_col in your config."
            )
        header = read_header(path, separator)
        missing = [c for c in columns if c not in header]
        if missing:
            why = (
                "time-ordered leave-one-out (eval_args.order: TO) needs a time column; "
                if (config["TIME_FIELD"] in missing)
                else ""
            )
            raise AtomicFileError(
                f"{path} has no column {', '.join(repr(c) for c in missing)} (its header has "
                f"{', '.join(f'{k}:{v}' for k, v in header.items())}). {why}Add the column to "
                "the file, or point the config at the right one (USER_ID_FIELD, ITEM_ID_FIELD, "
                "TIME_FIELD, load_col), for example --TIME_FIELD=ts."
            )
    for suffix in ("user", "item"):
        path = folder / f"{name}.{suffix}"
        if path.is_file() and suffix not in required:
            read_header(path, separator)
