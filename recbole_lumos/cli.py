"""The command line: ``python run_recbole_lumos.py --model=NAME --dataset=NAME [--key=value ...]``.

It accepts RecBole's flags (``--model``, ``--dataset``, ``--config_files`` and any
``--key=value``). ``--model`` may list several models separated by commas, and ``--seeds=N`` repeats
each over N seeds: they run one after another on the same dataset object, each
(model, seed) is stored as it finishes in a comparison folder, and the run ends with
``results.csv``, ``results.md`` and plots there (:mod:`recbole_lumos.report.comparison`).
``--ablate=views`` adds LUMOS's ablations; ``--rerun`` redoes stored runs.

A matrix: ``--attack``, ``--aggregator``, ``--attack_ratio`` and ``--noise_ratio`` may
also list several values (``--attack=none,bandwagon,scaled --aggregator=fedavg,median``);
every model then runs in every combination, each stored as a row named like
``FedSASRec[attack=bandwagon,aggregator=median]``, and a matrix with an attack also
draws ER@10 against ``attack_ratio``. Under a matrix with an attack, every cell (the
``none`` ones included) measures the exposure of the same targets.
Errors caused by the input are printed as one paragraph, without a traceback, and
the process exits with status 2. The whole config is checked before any data loads
(:mod:`recbole_lumos.config_check`); a key that nothing reads is warned about, with
the key probably meant, or refused with ``--strict``. ``--verbose`` shows the config
dump and the model on the console too (they are always in the run's log file).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import sys
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recbole_lumos.config import build_config, parse_overrides, parse_value
from recbole_lumos.config_check import config_file_keys, describe_unknown, parse_boolean, unknown_keys
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
    matrix: dict[str, list[Any]] = field(default_factory=dict)
    """Matrix keys given several values (``--attack=none,bandwagon``): key -> values, in :data:`MATRIX_KEYS` order."""
    strict: bool = False
    """``--strict``: an unknown config key is an error, not a warning."""
    verbose: bool = False
    """``--verbose``: the config dump and the model printout also go to the console."""

    @property
    def is_comparison(self) -> bool:
        return len(self.models) > 1 or self.seeds is not None or bool(self.matrix)

    def cells(self) -> list[dict[str, Any]]:
        """Every combination of the matrix values (one empty cell without a matrix). A cell without
        attack has no ``attack_ratio``: it would train the same model once per ratio."""
        keys = list(self.matrix)
        cells: list[dict[str, Any]] = []
        for values in itertools.product(*self.matrix.values()):
            cell = dict(zip(keys, values, strict=True))
            if str(cell.get("attack", "")).lower() == "none":
                cell.pop("attack_ratio", None)
            if cell not in cells:
                cells.append(cell)
        return cells

    def runs(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(row label, model, cell settings)`` of every row, models first, cells within a model."""
        return [(run_label(model, cell), model, cell) for model in self.models for cell in self.cells()]


MATRIX_KEYS = ("attack", "aggregator", "attack_ratio", "noise_ratio")
"""Keys that may take several comma-separated values on the command line: the robustness matrix."""


def run_label(model: str, cell: dict[str, Any]) -> str:
    """``Model[key=value,...]``, or the model alone for an empty cell."""
    if not cell:
        return model
    return f"{model}[{','.join(f'{key}={value}' for key, value in cell.items())}]"


def _matrix_values(key: str, value: Any) -> list[Any] | None:
    """The values of a matrix key given several, else None (``0.05,0.1`` parses as a tuple)."""
    if isinstance(value, list | tuple):
        values = list(value)
    elif isinstance(value, str) and "," in value:
        values = [parse_value(v.strip()) for v in value.split(",") if v.strip()]
    else:
        return None
    if len(set(map(repr, values))) != len(values):
        raise ConfigurationError(f"--{key} lists a value twice: {value!r}.")
    return values


def _check_matrix(command: CommandLine) -> None:
    """Fail on a bad attack, ratio or aggregator before anything trains."""
    from recbole_lumos.federated.aggregators import AGGREGATORS
    from recbole_lumos.federated.attacks import AttackSettings

    for cell in command.cells():
        settings = {**command.overrides, **cell}
        attack = AttackSettings.from_config(settings)
        aggregator = settings.get("aggregator")
        if aggregator is not None and str(aggregator).strip().lower() not in AGGREGATORS:
            raise ConfigurationError(
                f"Unknown aggregator {aggregator!r}. Valid aggregators are: {', '.join(AGGREGATORS)}."
            )
        if attack.poisons_updates:
            for model in command.models:
                config = build_config(model, command.dataset, command.config_files, settings)
                if not config["federated"]:
                    raise ConfigurationError(
                        f"--attack={attack.attack} poisons client updates, but {model} is trained centrally; "
                        "run it with data poisoning attacks only (random, popular, bandwagon), or drop it."
                    )


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
    matrix = {}
    for key in MATRIX_KEYS:
        values = _matrix_values(key, overrides.get(key))
        if values is not None:
            matrix[key] = values
            del overrides[key]
    return CommandLine(
        models=_expand_ablations(names, overrides.pop("ablate", None)),
        dataset=str(dataset),
        config_files=[str(f) for f in files],
        overrides=overrides,
        seeds=None if seeds is None else _seeds(seeds, int(overrides.get("seed", 2020))),
        rerun=parse_boolean("rerun", overrides.pop("rerun", False)),
        results_dir=overrides.pop("results_dir", None),
        matrix=matrix,
        strict=parse_boolean("strict", overrides.pop("strict", False)),
        verbose=parse_boolean("verbose", overrides.pop("verbose", False)),
    )


def comparison_folder(command: CommandLine) -> Path:
    """``saved/comparisons/<dataset>-<hash>``: the same command always finds the same folder."""
    if command.results_dir:
        return Path(command.results_dir)
    volatile = {"show_progress", "checkpoint_dir", "seed", "rerun"}
    settings = sorted((k, repr(v)) for k, v in command.overrides.items() if k not in volatile)
    what: tuple = (command.models, command.config_files, settings)
    if command.matrix:  # without a matrix the folders of earlier comparisons keep their names
        what += (sorted((k, repr(v)) for k, v in command.matrix.items()),)
    digest = hashlib.sha1(repr(what).encode()).hexdigest()[:8]
    root = Path(str(command.overrides.get("checkpoint_dir", "saved")))
    return root / "comparisons" / f"{command.dataset}-{digest}"


def check_keys(command: CommandLine) -> None:
    """Warn (``--strict``: fail) about keys on the command line or in ``--config_files`` that nothing reads."""
    sources = {"the command line": [*command.overrides, *command.matrix]}
    sources.update({f"--config_files {path}": keys for path, keys in config_file_keys(command.config_files).items()})
    for source, keys in sources.items():
        unknown = unknown_keys(keys)
        if not unknown:
            continue
        message = describe_unknown(unknown, source)
        if command.strict:
            raise ConfigurationError(message.replace(", or pass --strict to make this an error", ""))
        print(f"warning: {message}", file=sys.stderr)


def check_command(command: CommandLine) -> None:
    """Everything that can be checked before data loads: model names, keys, every model's and cell's config."""
    for name in command.models:
        resolve_model(name)  # fail on a typo before anything trains
    check_keys(command)
    _check_matrix(command)
    for name in command.models:
        for cell in command.cells():
            build_config(name, command.dataset, command.config_files, {**command.overrides, **cell})


def run(argv: Sequence[str]) -> list[RunResult]:
    """Run the command line: one model, or a comparison (several models and/or seeds)."""
    command = parse_command_line(argv)
    check_command(command)
    if not command.is_comparison:
        return [
            run_model(
                command.models[0], command.dataset, command.config_files, command.overrides, verbose=command.verbose
            )
        ]
    return run_comparison(command)


def run_comparison(command: CommandLine) -> list[RunResult]:
    """Every (model, matrix cell, seed) on one dataset object and one train mode; finished runs are skipped.

    Each run is stored in the comparison folder as soon as it ends, so an interrupted
    comparison resumes. A model that fails is stored as failed and the others still run.
    """
    from recbole_lumos.federated.attacks import DEFAULT_TARGETS
    from recbole_lumos.report.comparison import ComparisonStore, write_outputs

    logger = logging.getLogger()
    overrides = dict(command.overrides)
    overrides.setdefault("train_mode", "all_positions")  # the same mode for every model, fast on a CPU
    if any(str(v).lower() != "none" for v in command.matrix.get("attack", [])):
        overrides.setdefault("target_items", DEFAULT_TARGETS)  # the no-attack cells measure the same targets
    seeds = command.seeds or [int(overrides.get("seed", 2020))]
    store = ComparisonStore(comparison_folder(command))
    datasets = DatasetCache()
    results: list[RunResult] = []
    rows = command.runs()
    for seed in seeds:
        for label, name, cell in rows:
            if not command.rerun and store.finished(label, seed):
                logger.info("%s seed %d: already in %s, skipped (--rerun to redo)", label, seed, store.runs_dir)
                continue
            try:
                result = run_model(
                    name,
                    command.dataset,
                    command.config_files,
                    {**overrides, **cell, "seed": seed},
                    datasets=datasets,
                    verbose=command.verbose,
                )
            except LumosError:
                raise
            except Exception as error:  # one broken model must not lose the others
                logger.error("%s seed %d failed:\n%s", label, seed, traceback.format_exc())
                store.save_failure(label, seed, f"{type(error).__name__}: {error}")
                continue
            store.save_run(label, seed, {**asdict(result), "label": label})
            results.append(result)
    table = write_outputs(store, [label for label, _, _ in rows], seeds)
    print(table)
    print(f"results: {store.folder}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    return exit_status(run, sys.argv[1:] if argv is None else argv)
