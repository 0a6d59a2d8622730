"""The command line: ``python run_recbole_lumos.py --model=NAME --dataset=NAME [--key=value ...]``.

It accepts RecBole's flags (``--model``, ``--dataset``, ``--config_files`` and any
``--key=value``). ``--model`` may list several models separated by commas, and ``--seeds=N`` repeats
each over N seeds: they run one after another on the same dataset object, each
(model, seed) is stored as it finishes in a comparison folder, and the run ends with
``results.csv``, ``results.md`` and plots there (:mod:`recbole_lumos.report.comparison`).
``--ablate=views`` adds LUMOS's ablations; ``--rerun`` redoes stored runs.
Errors caused by the input are printed as one paragraph, without a traceback, and
the process exits with status 2.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recbole_lumos.config import parse_overrides
from recbole_lumos.errors import ConfigurationError, LumosError, exit_status
from recbole_lumos.model.registry import ABLATIONS, resolve_model
from recbole_lumos.quick_start import DatasetCache, RunResult, run_model


@dataclass
class CommandLine:
    models: list[str]
    dataset: str
    config_files: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None
    """``--seeds=N`` (N seeds from ``--seed``, default 2020) or ``--seeds=2020,2021``."""
    rerun: bool = False
    results_dir: str | None = None

    @property
    def is_comparison(self) -> bool:
        return len(self.models) > 1 or self.seeds is not None


MAX_SEED_COUNT = 100
"""Larger ``--seeds=N`` counts are refused: ``--seeds=2021`` almost surely meant one seed, not 2,021 runs."""


def _seeds(value: Any, first: int) -> list[int]:
    if isinstance(value, list | tuple):
        return [int(v) for v in value]
    text = str(value)
    if "," in text:
        return [int(v) for v in text.split(",") if v.strip()]
    count = int(text)
    if count < 1:
        raise ConfigurationError(f"--seeds must be a positive count or a list of seeds, got {value!r}.")
    if count > MAX_SEED_COUNT:
        raise ConfigurationError(
            f"--seeds={count} asks for {count} runs per model, which looks like a seed, not a count. "
            f"For that one seed use --seed={count} --seeds=1; for several give a list, e.g. "
            f"--seeds={count},{count + 1}."
        )
    return [first + i for i in range(count)]


def _expand_ablations(models: list[str], ablate: str | None) -> list[str]:
    if not ablate:
        return models
    if ablate not in ABLATIONS:
        raise ConfigurationError(f"--ablate={ablate!r} is unknown; choose one of {', '.join(ABLATIONS)}.")
    expanded = [m for m in models if m not in ABLATIONS[ablate]]
    return expanded + ABLATIONS[ablate]


def parse_command_line(argv: Sequence[str]) -> CommandLine:
    """Split RecBole-style arguments into models, dataset, config files, comparison flags and overrides."""
    overrides = parse_overrides(argv)
    models = str(overrides.pop("model", "SASRec"))
    dataset = overrides.pop("dataset", None)
    if not dataset:
        raise ConfigurationError("No dataset given. Pass --dataset=NAME, for example --dataset=ml-1m.")
    files = overrides.pop("config_files", None) or ""
    files = files if isinstance(files, list) else str(files).replace(",", " ").split()
    seeds = overrides.pop("seeds", None)
    names = [m.strip() for m in models.split(",") if m.strip()]
    return CommandLine(
        models=_expand_ablations(names, overrides.pop("ablate", None)),
        dataset=str(dataset),
        config_files=[str(f) for f in files],
        overrides=overrides,
        seeds=None if seeds is None else _seeds(seeds, int(overrides.get("seed", 2020))),
        rerun=bool(overrides.pop("rerun", False)),
        results_dir=overrides.pop("results_dir", None),
    )


def comparison_folder(command: CommandLine) -> Path:
    """``saved/comparisons/<dataset>-<hash>``: the same command always finds the same folder."""
    if command.results_dir:
        return Path(command.results_dir)
    volatile = {"show_progress", "checkpoint_dir", "seed", "rerun"}
    settings = sorted((k, repr(v)) for k, v in command.overrides.items() if k not in volatile)
    digest = hashlib.sha1(repr((command.models, command.config_files, settings)).encode()).hexdigest()[:8]
    root = Path(str(command.overrides.get("checkpoint_dir", "saved")))
    return root / "comparisons" / f"{command.dataset}-{digest}"


def run(argv: Sequence[str]) -> list[RunResult]:
    """Run the command line: one model, or a comparison (several models and/or seeds)."""
    command = parse_command_line(argv)
    for name in command.models:
        resolve_model(name)  # fail on a typo before anything trains
    if not command.is_comparison:
        return [run_model(command.models[0], command.dataset, command.config_files, command.overrides)]
    return run_comparison(command)


def run_comparison(command: CommandLine) -> list[RunResult]:
    """Every (model, seed) on one dataset object and one train mode; finished runs are skipped.

    Each run is stored in the comparison folder as soon as it ends, so an interrupted
    comparison resumes. A model that fails is stored as failed and the others still run.
    """
    from recbole_lumos.report.comparison import ComparisonStore, write_outputs

    logger = logging.getLogger()
    overrides = dict(command.overrides)
    overrides.setdefault("train_mode", "all_positions")  # the same mode for every model, fast on a CPU
    seeds = command.seeds or [int(overrides.get("seed", 2020))]
    store = ComparisonStore(comparison_folder(command))
    datasets = DatasetCache()
    results: list[RunResult] = []
    for seed in seeds:
        for name in command.models:
            if not command.rerun and store.finished(name, seed):
                logger.info("%s seed %d: already in %s, skipped (--rerun to redo)", name, seed, store.runs_dir)
                continue
            try:
                result = run_model(
                    name, command.dataset, command.config_files, {**overrides, "seed": seed}, datasets=datasets
                )
            except LumosError:
                raise
            except Exception as error:  # one broken model must not lose the others
                logger.error("%s seed %d failed:\n%s", name, seed, traceback.format_exc())
                store.save_failure(name, seed, f"{type(error).__name__}: {error}")
                continue
            store.save_run(name, seed, asdict(result))
            results.append(result)
    table = write_outputs(store, command.models, seeds)
    print(table)
    print(f"results: {store.folder}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    return exit_status(run, sys.argv[1:] if argv is None else argv)
