"""Generate (or load) the LUMOS views of a dataset without training anything.

    python -m recbole_lumos.generate --dataset=ml-100k [--data_path=..] [--lumos_generation=semantic]
        [--lumos_max_users=N] [--lumos_cache_dir=..] [--config_files=..] [any --key=value]

The config is LUMOS's (``build_config("LUMOS", ...)``), so the views written here are
exactly the ones a later ``run_recbole_lumos.py --model=LUMOS`` run loads from the
cache. Prints the statistics and ends with ``views: PATH``. Input errors are printed
as one paragraph without a traceback (exit status 2), like the main command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import recbole_lumos.compat  # noqa: F401  (RecBole workarounds before RecBole is used)
from recbole_lumos.errors import ConfigurationError, exit_status


def prepare_split(argv: Sequence[str]) -> tuple[Any, Any, tuple[Any, Any, Any]]:
    """``(config, dataset, (train, valid, test))`` built from command-line arguments with LUMOS's config,
    as a ``--model=LUMOS`` run builds them (so its views cache is the one found here)."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_lumos.cli import parse_command_line
    from recbole_lumos.config import build_config, parse_overrides
    from recbole_lumos.data.atomic_files import ensure_dataset

    given_model = parse_overrides(argv).get("model")
    if given_model not in (None, "LUMOS"):
        raise ConfigurationError(
            f"--model={given_model} was given, but views are always made with LUMOS's settings (the views "
            "cache is LUMOS's); drop --model."
        )
    command = parse_command_line(list(argv))
    config = build_config("LUMOS", command.dataset, command.config_files, command.overrides)
    ensure_dataset(config)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    return config, dataset, data_preparation(config, dataset)


def run(argv: Sequence[str]) -> str:
    """Build config, dataset and split, ensure the views; return the views file path."""
    from recbole_lumos.data.noise import views_config
    from recbole_lumos.generation.views import ensure_views, stats_table

    config, dataset, (train_data, _, _) = prepare_split(argv)
    view_set = ensure_views(views_config(config), dataset, train_data._dataset)  # noisy views: their own folder
    print(stats_table(view_set.stats))
    print(f"views: {view_set.path}")
    return str(view_set.path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    from recbole_lumos.run_log import init_console_logger

    args = list(sys.argv[1:] if argv is None else argv)
    init_console_logger(verbose=any(a in ("--verbose", "--verbose=True") for a in args))
    return exit_status(run, args)


if __name__ == "__main__":
    sys.exit(main())
