"""The command line: ``python run_recbole_lumos.py --model=NAME --dataset=NAME [--key=value ...]``.

It accepts RecBole's flags (``--model``, ``--dataset``, ``--config_files`` and any
``--key=value``). ``--model`` may list several models separated by commas; they run
one after another on the same dataset object and end with one comparison table.
Errors caused by the input are printed as one paragraph, without a traceback, and
the process exits with status 2.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recbole_lumos.config import parse_overrides
from recbole_lumos.errors import EXIT_CODE, ConfigurationError, LumosError
from recbole_lumos.model.registry import resolve_model
from recbole_lumos.quick_start import DatasetCache, RunResult, run_model
from recbole_lumos.report.table import comparison_table


@dataclass
class CommandLine:
    models: list[str]
    dataset: str
    config_files: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)


def parse_command_line(argv: Sequence[str]) -> CommandLine:
    """Split RecBole-style arguments into models, dataset, config files and overrides."""
    overrides = parse_overrides(argv)
    models = str(overrides.pop("model", "SASRec"))
    dataset = overrides.pop("dataset", None)
    if not dataset:
        raise ConfigurationError("No dataset given. Pass --dataset=NAME, for example --dataset=ml-1m.")
    files = overrides.pop("config_files", None) or ""
    files = files if isinstance(files, list) else str(files).replace(",", " ").split()
    return CommandLine(
        models=[m.strip() for m in models.split(",") if m.strip()],
        dataset=str(dataset),
        config_files=[str(f) for f in files],
        overrides=overrides,
    )


def run(argv: Sequence[str]) -> list[RunResult]:
    """Run every model of the command line; raise the first input error."""
    command = parse_command_line(argv)
    for name in command.models:
        resolve_model(name)  # fail on a typo before anything trains
    datasets = DatasetCache()
    results: list[RunResult] = []
    failures: dict[str, str] = {}
    for name in command.models:
        try:
            results.append(run_model(name, command.dataset, command.config_files, command.overrides, datasets=datasets))
        except LumosError:
            raise
        except Exception as error:  # one broken model must not lose the others
            if len(command.models) == 1:
                raise
            logging.getLogger().error("%s failed:\n%s", name, traceback.format_exc())
            failures[name] = f"{type(error).__name__}: {error}"
    if len(command.models) > 1:
        print(comparison_table(results, failures))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    try:
        run(sys.argv[1:] if argv is None else argv)
    except LumosError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CODE
    return 0
