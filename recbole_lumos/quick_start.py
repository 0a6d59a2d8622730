"""Train and evaluate one model, the way ``recbole.quick_start.run_recbole`` does.

The steps, seeds and calls are RecBole's own (``init_seed`` -> ``create_dataset`` ->
``data_preparation`` -> ``init_seed`` -> model -> ``get_trainer(...).fit/evaluate``),
so a RecBole model gives exactly the numbers RecBole gives. What differs: models are
passed as classes (plugins work), the dataset is checked first (clear errors), a
dataset object can be shared by several models, and the result is also written as
JSON next to the checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from logging import getLogger
from pathlib import Path
from typing import Any

from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.dataset import Dataset
from recbole.utils import get_local_time, get_trainer, init_seed, set_color

from recbole_lumos.config import build_config
from recbole_lumos.data.atomic_files import data_fingerprint, ensure_dataset
from recbole_lumos.data.partition import release_prefix_samples
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.client_model import needs_views
from recbole_lumos.model.registry import resolve_model
from recbole_lumos.recommender import build_recommender
from recbole_lumos.run_log import FILE_ONLY, init_run_logger


@dataclass
class RunResult:
    """One finished (model, dataset, seed) run, as written to ``<checkpoint>.json``."""

    model: str
    dataset: str
    seed: int
    best_valid_score: float
    best_valid_result: dict[str, float]
    test_result: dict[str, float]
    checkpoint: str | None
    wall_time_s: float
    """Setup, training and evaluation, summed over the segments of a resumed run."""
    config: dict[str, Any] = field(default_factory=dict)
    train_mode: str = "prefix"
    federated: bool = False
    epochs: int | None = None
    """Epochs (central) or communication rounds (federated) actually run."""
    bytes_up_per_client: float | None = None
    """Federated: mean bytes uploaded per participating client per round."""
    bytes_down_per_client: float | None = None
    traffic: list[dict[str, float]] = field(default_factory=list)
    generation: dict[str, Any] | None = None
    """LUMOS: the generation mode actually used, the views file and its statistics."""
    num_clients: int | None = None
    """All-position runs: users that trained (federated: the clients)."""
    valid_curve: list[dict[str, float]] = field(default_factory=list)
    """All-position runs: every validation, ``{"epoch": e, "ndcg@20": ..., ...}``."""
    cpu_time_s: float | None = None
    """CPU seconds of the process (all threads), summed like ``wall_time_s``: the figure to
    compare when other jobs share the machine."""
    at_budgets: list[dict[str, Any]] = field(default_factory=list)
    """All-position runs: for each of ``round_budgets`` B, the valid and test metrics of the best
    model by validation up to round B, and the round it came from (``best_round``)."""
    ended_by_budget: bool = False
    """All-position runs: the ``epochs`` budget, not early stopping, ended the run (a warning said so)."""
    time_complete: bool = True
    """False when the run resumed from a checkpoint that predates the run clock: the times
    then cover the last segment only."""
    privacy: dict[str, Any] | None = None
    """Federated runs with local DP: (epsilon, delta) and how they were counted
    (:class:`~recbole_lumos.federated.accounting.PrivacyBudget`)."""
    attack: dict[str, Any] | None = None
    """Runs under attack or with target items: the attack, its malicious clients and the targets
    (``er@K`` is in ``test_result``)."""
    data: dict[str, Any] | None = None
    """The folder the data was read from and each atomic file's size and SHA-256
    (:func:`~recbole_lumos.data.atomic_files.data_fingerprint`)."""
    dropped_clients: int | None = None
    """Federated runs: sampled clients that never answered, over all rounds (``client_dropout``)."""
    refused_updates: int | None = None
    """Federated runs: client updates the server refused (non-finite, misshapen, rows out of range,
    a weight out of bounds; :mod:`recbole_lumos.federated.update_checks`), over all rounds."""
    log_dir: str | None = None
    """The run's log folder (``run.log``, ``tensorboard/``; :mod:`recbole_lumos.run_log`)."""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")


class DatasetCache:
    """Reuse one loaded and filtered RecBole dataset across models whose data settings agree.

    ``data_preparation`` builds (mutates) the dataset it is given, so every model gets
    a deep copy of the pristine object: the same data, loaded and filtered once.
    """

    def __init__(self) -> None:
        self._datasets: dict[str, Dataset] = {}

    @staticmethod
    def key(config: Config) -> str:
        names = sorted(
            set(config.parameters["Dataset"])
            | {"data_path", "dataset", "eval_args", "MAX_ITEM_LIST_LENGTH", "MODEL_TYPE", "MODEL_INPUT_TYPE"}
        )
        return repr([(name, config[name]) for name in names])

    def get(self, config: Config) -> Dataset:
        key = self.key(config)
        if key not in self._datasets:
            self._datasets[key] = create_dataset(config)
        return copy.deepcopy(self._datasets[key])


def _unique_checkpoint(path: str) -> str:
    """Claim a checkpoint name no other run uses, by creating the file exclusively.

    RecBole names checkpoints by the second, so two runs started in the same second
    (for example two seeds in parallel) would share, and overwrite, one file. The
    empty placeholder is replaced by the first save, or removed if the run fails.
    """
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        candidate = base if n == 0 else base.with_name(f"{base.stem}-{n}.pth")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return str(candidate)
        except FileExistsError:
            n += 1


def _release_if_empty(path: str) -> None:
    """Remove a claimed checkpoint name that no save ever filled (the run failed)."""
    with contextlib.suppress(OSError):
        if Path(path).stat().st_size == 0:
            Path(path).unlink()


# Keys copied into the result JSON (the full config is in the checkpoint and the log).
_REPORTED_KEYS = (
    "MAX_ITEM_LIST_LENGTH",
    "hidden_size",
    "n_layers",
    "n_heads",
    "epochs",
    "learning_rate",
    "train_batch_size",
    "stopping_step",
    "valid_metric",
    "eval_args",
    "data_path",
    "client_fraction",
    "clients_per_round",
    "client_batch",
    "local_epochs",
    "local_optimizer",
    "local_lr",
    "local_loss",
    "num_negatives",
    "sparse_upload",
    "aggregator",
    "server_optimizer",
    "server_lr",
    "server_lazy_rows",
    "ldp_clip",
    "ldp_noise_multiplier",
    "ldp_delta",
    "noise_ratio",
    "attack",
    "attack_ratio",
    "target_items",
    "attack_scale",
    "attack_std",
    "user_batch_size",
    "user_batch_order",
    "window_stride",
    "lambda_cl",
    "tau",
    "sim",
    "w_c",
    "lumos_views",
    "k_f",
    "rho_r",
    "rho_c",
    "lumos_generation",
)


def _save_recbole_checkpoint(path: str, config: Config, model: Any) -> None:
    """Save in RecBole's checkpoint layout so :mod:`recbole_lumos.checkpoint` reloads it."""
    import torch

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {
        "config": config,
        "epoch": None,
        "cur_step": None,
        "best_valid_score": None,
        "state_dict": model.state_dict(),
        "other_parameter": model.other_parameter(),
    }
    torch.save(state, path, pickle_protocol=4)


def run_model(
    model: str,
    dataset: str,
    config_files: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    *,
    saved: bool = True,
    datasets: DatasetCache | None = None,
    verbose: bool = False,
) -> RunResult:
    """Train ``model`` on ``dataset`` and evaluate it on the test split.

    The console shows what happens; the config dump, the dataset summary and the model
    go to the run's log file only (``verbose``: to the console too)."""
    spec = resolve_model(model)
    config = build_config(spec, dataset, config_files, overrides)
    ensure_dataset(config)
    from recbole_lumos.federated.callbacks import RunClock

    clock = RunClock()
    init_seed(config["seed"], config["reproducibility"])
    log_dir = init_run_logger(config, verbose=verbose)
    logger = getLogger()
    logger.info(config, extra=FILE_ONLY)
    fingerprint = data_fingerprint(config)
    data = (datasets or DatasetCache()).get(config)
    logger.info(data, extra=FILE_ONLY)
    logger.info(
        "%s: %d users, %d items, %d interactions from %s; log: %s",
        dataset,
        data.user_num - 1,
        data.item_num - 1,
        data.inter_num,
        fingerprint["path"],
        log_dir,
    )
    train_data, valid_data, test_data = data_preparation(config, data)
    del data  # this run's copy: the splits hold what they need

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    recommender = build_recommender(spec.model_class, config, train_data._dataset).to(config["device"])
    logger.info(recommender, extra=FILE_ONLY)
    federated = bool(config["federated"])
    train_mode = "all_positions" if federated else str(config["train_mode"])
    if train_mode not in ("prefix", "all_positions"):
        raise ConfigurationError(f"train_mode must be 'prefix' or 'all_positions', got {train_mode!r}.")
    extra: dict[str, Any] = {"train_mode": train_mode, "federated": federated}
    if train_mode == "prefix" and needs_views(recommender):
        raise ConfigurationError(
            f"{spec.name} trains in all_positions mode only (its views are joined by user, not by prefix): "
            "drop --train_mode=prefix, or pass --federated=False for central all-position training."
        )
    robustness = [key for key in ("attack", "noise_ratio", "target_items") if config[key] not in (None, "none", 0, 0.0)]
    if train_mode == "prefix" and robustness:
        raise ConfigurationError(
            f"{', '.join(robustness)} need the all-position engine, where clients are built: add "
            "--train_mode=all_positions (or use a federated model)."
        )
    if train_mode == "prefix":
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, recommender)
        trainer.saved_model_file = _unique_checkpoint(trainer.saved_model_file)
        checkpoint = trainer.saved_model_file
        try:
            best_valid_score, best_valid_result = trainer.fit(
                train_data, valid_data, saved=saved, show_progress=config["show_progress"]
            )
        finally:
            _release_if_empty(checkpoint)
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
        extra["epochs"] = len(trainer.train_loss_dict)
    else:
        from recbole_lumos.federated.runner import run_lightning

        freed = release_prefix_samples(train_data._dataset)
        logger.info("all-position training: %.0f MB of RecBole's prefix samples released", freed / 2**20)

        outcome = run_lightning(config, recommender, train_data, valid_data, test_data, clock)
        best_valid_result, test_result = outcome["best_valid_result"], outcome["test_result"]
        best_valid_score = best_valid_result[str(config["valid_metric"]).lower()]
        traffic = outcome["traffic"]
        extra.update(epochs=outcome["rounds"], traffic=traffic, generation=outcome["generation"])
        extra.update(num_clients=outcome["clients"], valid_curve=outcome["valid_curve"])
        extra.update(ended_by_budget=outcome["ended_by_budget"], at_budgets=outcome["at_budgets"])
        extra.update(privacy=outcome["privacy"], attack=outcome["attack"])
        if config["federated"]:
            extra.update(dropped_clients=outcome["dropped_clients"], refused_updates=outcome["refused_updates"])
        if traffic:
            extra["bytes_up_per_client"] = sum(t["bytes_up_per_client"] for t in traffic) / len(traffic)
            extra["bytes_down_per_client"] = traffic[-1]["bytes_down_per_client"]
        checkpoint = str(Path(config["checkpoint_dir"]) / f"{spec.name}-{get_local_time()}.pth")
        if saved:
            checkpoint = _unique_checkpoint(checkpoint)
            _save_recbole_checkpoint(checkpoint, config, recommender)
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    if extra.get("privacy"):
        budget = extra["privacy"]
        epsilons = f"epsilon {budget['epsilon']:.4g} (amplified {budget['epsilon_amplified']:.4g})"
        logger.info(set_color("privacy", "yellow") + f": {epsilons}, delta {budget['delta']:g}")
    wall_s, cpu_s = clock.totals()

    result = RunResult(
        model=spec.name,
        dataset=dataset,
        seed=config["seed"],
        best_valid_score=float(best_valid_score),
        best_valid_result={k: float(v) for k, v in best_valid_result.items()},
        test_result={k: float(v) for k, v in test_result.items()},
        checkpoint=str(Path(checkpoint).resolve()) if saved else None,
        wall_time_s=wall_s,
        cpu_time_s=cpu_s,
        time_complete=clock.complete,
        config={key: config[key] for key in _REPORTED_KEYS if key in config},
        data=fingerprint,
        log_dir=str(log_dir),
        **extra,
    )
    if saved:
        json_path = Path(checkpoint).with_suffix(".json")
        result.save(json_path)
        logger.info(set_color("results", "blue") + f": {json_path}")
    return result
