"""The run's log: the console says what happened, the log file holds everything.

:func:`init_run_logger` replaces RecBole's ``init_logger`` for our runs. It keeps
RecBole's layout and formats, with three differences:

* **One folder per run**, RecBole-style: ``log/<Model>/<Model>-<dataset>-<time>-<hash>/``
  holds ``run.log`` (the full log) and ``tensorboard/`` (RecBole's trainer and
  Lightning's TensorBoard logger both write there; see :mod:`recbole_lumos.compat`,
  item 8). Nothing goes to ``log_tensorboard/``. The Lightning run folder
  ``saved/<run>/`` keeps ``logs/metrics.csv``: it is part of the run's state (a
  resumed run reads its validation curve from it), not a log.
* **Quiet console.** Records logged with ``extra=FILE_ONLY`` (the config dump, the
  dataset summary, the model printout) and RecBole's ``[Training]``/``[Evaluation]``
  dataloader summaries go to the file only; ``--verbose`` shows them too. Lightning's
  informational lines (devices found, tips) are shown only with ``--verbose``.
* **No ANSI codes when the stream is not a terminal** (a pipe, a file, CI): colours
  only on a TTY.

The folder is created with ``exist_ok``, so runs started together do not race.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from pathlib import Path
from typing import Any

FILE_ONLY = {"console": False}
"""``logger.info(..., extra=FILE_ONLY)``: the record goes to the log file, not the console (unless verbose)."""

LOG_ROOT = Path("log")
_ANSI = re.compile(r"\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])")
_FILE_ONLY_PREFIXES = ("[Training]", "[Evaluation]")
"""RecBole's dataloader summaries (``recbole.data.utils``): file only."""
_LIGHTNING_LOGGERS = ("lightning", "pytorch_lightning", "lightning.pytorch", "lightning_fabric")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def strip_ansi(text: str) -> str:
    """``text`` without ANSI colour codes."""
    return _ANSI.sub("", text)


class _PlainFormatter(logging.Formatter):
    """RecBole's format, without colour codes (RecBole's ``set_color`` puts them in messages)."""

    def format(self, record: logging.LogRecord) -> str:
        return strip_ansi(super().format(record))


class _ConsoleFilter(logging.Filter):
    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        if getattr(record, "console", True) is False:
            return False
        return not (isinstance(record.msg, str) and strip_ansi(record.msg).startswith(_FILE_ONLY_PREFIXES))


class _RunFileHandler(logging.FileHandler):
    """The run's ``run.log``; :func:`run_log_dir` finds the folder through it."""


class _ConsoleHandler(logging.StreamHandler):
    """The run's console output."""


def _replaced(handler: logging.Handler) -> bool:
    """Handlers of an earlier run, ours or RecBole's ``init_logger``'s; others (pytest's) stay."""
    if isinstance(handler, _RunFileHandler | _ConsoleHandler):
        return True
    from recbole.utils.logger import RemoveColorFilter

    if any(isinstance(f, RemoveColorFilter) for f in handler.filters):
        return True
    import colorlog

    return type(handler) is logging.StreamHandler and isinstance(handler.formatter, colorlog.ColoredFormatter)


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def console_formatter(stream: Any) -> logging.Formatter:
    """RecBole's coloured console format on a terminal, the same without colours elsewhere."""
    fmt, datefmt = "%(asctime)-15s %(levelname)s  %(message)s", "%d %b %H:%M"
    if is_terminal(stream):
        import colorlog

        colours = {"DEBUG": "cyan", "WARNING": "yellow", "ERROR": "red", "CRITICAL": "red"}
        return colorlog.ColoredFormatter("%(log_color)s" + fmt, datefmt, log_colors=colours)
    return _PlainFormatter(fmt, datefmt)


def run_log_name(config: Any) -> str:
    """``<Model>-<dataset>-<time>-<hash>``, RecBole's log-file stem (hash of the config values)."""
    from recbole.utils import get_local_time

    values = "".join(str(v) for v in config.final_config_dict.values())
    digest = hashlib.md5(values.encode("utf-8")).hexdigest()[:6]
    return f"{model_name(config)}-{config['dataset']}-{get_local_time()}-{digest}"


def model_name(config: Any) -> str:
    return str(config["model_display_name"] if "model_display_name" in config else config["model"])


def init_run_logger(config: Any, verbose: bool = False, stream: Any = None) -> Path:
    """Set up the root logger for one run (replacing an earlier run's handlers); returns its log folder."""
    folder = LOG_ROOT / model_name(config) / run_log_name(config)
    n = 1
    while folder.exists():  # two runs of one config in the same second
        folder = folder.with_name(f"{folder.name.rsplit('~', 1)[0]}~{n}")
        n += 1
    folder.mkdir(parents=True, exist_ok=True)
    folder = folder.resolve()
    level = _LEVELS.get(str(config["state"] or "info").lower(), logging.INFO)
    file_handler = _RunFileHandler(folder / "run.log", encoding="utf-8")
    file_handler.setFormatter(_PlainFormatter("%(asctime)-15s %(levelname)s  %(message)s", "%a %d %b %Y %H:%M:%S"))
    stream = sys.stderr if stream is None else stream
    console = _ConsoleHandler(stream)
    console.setFormatter(console_formatter(stream))
    console.addFilter(_ConsoleFilter(verbose))
    root = logging.getLogger()
    for handler in [h for h in root.handlers if _replaced(h)]:
        root.removeHandler(handler)
        handler.close()
    for handler in (console, file_handler):
        handler.setLevel(level)
        root.addHandler(handler)
    root.setLevel(level)
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    return folder


def init_console_logger(verbose: bool = False, stream: Any = None) -> None:
    """Console-only logging for commands that train nothing (``python -m recbole_lumos.generate``):
    the same quiet filter, and colours only on a terminal."""
    stream = sys.stderr if stream is None else stream
    console = _ConsoleHandler(stream)
    console.setFormatter(console_formatter(stream))
    console.addFilter(_ConsoleFilter(verbose))
    console.setLevel(logging.INFO)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if _replaced(h)]:
        root.removeHandler(handler)
        handler.close()
    root.addHandler(console)
    root.setLevel(logging.INFO)


def run_log_dir() -> Path | None:
    """The current run's log folder (None outside a run set up by :func:`init_run_logger`)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _RunFileHandler):
            return Path(handler.baseFilename).parent
    return None
