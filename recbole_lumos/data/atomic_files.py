"""Checks on a dataset's atomic files before RecBole reads them.

RecBole reports a missing dataset by trying its (dead) download mirror, and a bad
header or a missing column with a ``KeyError`` deep in pandas. These checks run
first and say what is wrong and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

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
    return folder


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
