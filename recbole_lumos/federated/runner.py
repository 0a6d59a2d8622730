"""Run a model through Lightning in all-position mode, federated or central.

One ``pl.Trainer`` per run; one Lightning epoch is one communication round
(federated) or one pass over all users (central). Checkpoints (``last.ckpt`` every
round, ``best.ckpt`` by ``valid_metric``), early stopping, loggers and the progress
bar are Lightning's own. The run folder is named by model, dataset, seed and a hash
of the config, so rerunning the same command resumes from ``last.ckpt``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader

from recbole_lumos.compat import load_trusted
from recbole_lumos.data.partition import (
    ClientPartition,
    IndexedPartition,
    RoundSampler,
    collate_cohort,
)
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.accounting import PrivacyBudget, check_delta, privacy_budget
from recbole_lumos.federated.allocator import keep_freed_memory
from recbole_lumos.federated.callbacks import (
    AggregationCallback,
    BudgetCheckpoints,
    RunClock,
    RunFolderCheckpoint,
)
from recbole_lumos.federated.module import SequentialRecModule
from recbole_lumos.federated.population import Population, build_population
from recbole_lumos.report.budgets import best_validation
from recbole_lumos.report.exposure import ExposureMeter
from recbole_lumos.run_log import run_log_dir

# Keys that do not change what is trained (so they do not change the run folder).
_VOLATILE = {
    "resume",
    "rerun",
    "show_progress",
    "device",
    "gpu_id",
    "use_gpu",
    "state",
    "checkpoint_dir",
    "epochs",
    "data_path",
    "model_display_name",
    "log_dir",
    "federated_stopping_step",
    "stopping_step",
    "ldp_delta",  # reporting only
    "round_budgets",  # reporting only
    "verbose",  # console only
    "strict",  # checks only
}

_ADDED_UNSET = {"lumos_views_seed", "target_items", "attack_length"}
"""Keys added after runs were stored: while unset (``None``) they stay out of the hash, so the
run folders, and the checkpoints of unfinished runs, keep their names."""

_ADDED_DEFAULTS = {
    "noise_ratio": 0.0,
    "attack": "none",
    "attack_ratio": 0.1,
    "attack_scale": 10.0,
    "attack_std": 0.1,
    "client_dropout": 0.0,
}
"""Keys added after runs were stored, with their defaults: at the default they stay out of the hash."""

_FORMER_DEFAULTS = {"max_update_norm": (1.0, None)}
"""Keys whose default changed after runs were stored: ``key -> (new default, old default)``; at the new
default they are hashed as the old one."""


def _hashed(key: str, value: Any) -> bool:
    if key in _VOLATILE or (key in _ADDED_UNSET and value is None):
        return False
    return not (key in _ADDED_DEFAULTS and value == _ADDED_DEFAULTS[key])


def _hash_value(key: str, value: Any) -> Any:
    if key in _FORMER_DEFAULTS and value == _FORMER_DEFAULTS[key][0]:
        return _FORMER_DEFAULTS[key][1]
    return value


def run_name(config: Any) -> str:
    """``<Model>-<dataset>-seed<seed>-<hash>``: stable across reruns of the same config."""
    items = sorted((k, repr(_hash_value(k, v))) for k, v in config.final_config_dict.items() if _hashed(k, v))
    digest = hashlib.sha1(repr(items).encode()).hexdigest()[:8]
    name = config["model_display_name"] if "model_display_name" in config else config["model"]
    return f"{name}-{config['dataset']}-seed{config['seed']}-{digest}"


def clients_per_round(config: Any, num_clients: int) -> int:
    """Clients sampled per round.

    ``client_fraction``, when set, wins: ``round(client_fraction * num_clients)``, at least
    1. Otherwise ``clients_per_round`` (the default recipe's fixed cohort, which keeps a
    round's cost and the server's pseudo-gradient noise the same on every dataset),
    capped at the number of clients. With neither, every client takes part.
    """
    if config["client_fraction"] is not None:
        fraction = float(config["client_fraction"])
        if not 0 < fraction <= 1:
            raise ConfigurationError(f"client_fraction must be in (0, 1], got {fraction}.")
        return max(1, round(fraction * num_clients))
    if not config["clients_per_round"]:
        return num_clients
    count = int(config["clients_per_round"])
    if count < 1:
        raise ConfigurationError(f"clients_per_round must be at least 1, got {count}.")
    if count > num_clients:
        logging.getLogger().info("clients_per_round=%d > %d clients: every client takes part", count, num_clients)
    return min(count, num_clients)


def client_dropout(config: Any) -> float:
    """``client_dropout``: the share of a round's sampled clients that never answer, in [0, 1)."""
    share = float(config["client_dropout"] or 0.0) if "client_dropout" in config else 0.0
    if not 0 <= share < 1:
        raise ConfigurationError(f"client_dropout must be a share in [0, 1), got {share}.")
    return share


def eval_step_key(config: Any, federated: bool) -> str:
    """The key that set the rounds (epochs) between validations: the one to name in a message."""
    return "federated_eval_step" if federated and config["federated_eval_step"] else "eval_step"


def validation_schedule(config: Any, federated: bool) -> tuple[int, int]:
    """``(rounds or epochs between validations, validations without improvement before stopping)``.

    Central runs use RecBole's ``eval_step`` and ``stopping_step``. A federated round is
    far cheaper than an epoch and its curve is noisier, so federated runs read
    ``federated_eval_step`` and ``federated_stopping_step`` when they are set.
    """
    eval_step, patience = config["eval_step"], config["stopping_step"]
    if federated:
        if config["federated_eval_step"]:
            eval_step = config["federated_eval_step"]
        if config["federated_stopping_step"]:
            patience = config["federated_stopping_step"]
    return int(eval_step or 1), int(patience)


def client_loader(config: Any, partition: ClientPartition, federated: bool) -> DataLoader:
    """Round batches: cohorts of sampled clients, or user batches; both length-bucketed.

    Clients are ordered by number of windows before being cut into cohorts, so a
    vmapped cohort pads little; the cohorts' order is then shuffled.
    """
    windows = [client.inputs.size(0) for client in partition.clients]
    dropout = 0.0
    if federated:
        per_round = clients_per_round(config, len(partition))
        batch = int(config["client_batch"] or 1)
        dropout = client_dropout(config)
    else:
        per_round = len(partition)
        batch = int(config["user_batch_size"] or 64)
        order = config["user_batch_order"] or "by_length"
        if order not in ("by_length", "random"):
            raise ConfigurationError(f"user_batch_order must be 'by_length' or 'random', got {order!r}.")
        windows = [client.history.numel() for client in partition.clients] if order == "by_length" else None
    sampler = RoundSampler(
        len(partition),
        clients_per_round=per_round,
        client_batch=batch,
        seed=int(config["seed"]),
        lengths=windows,
        dropout=dropout,
    )
    # Its own generator: creating the iterator must not draw from the global RNG that the
    # round's dropout is seeded from (a resumed run creates it at another moment).
    return DataLoader(
        IndexedPartition(partition),
        batch_sampler=sampler,
        collate_fn=collate_cohort,
        num_workers=0,
        generator=torch.Generator().manual_seed(int(config["seed"])),
    )


def validation_curve(logs: Path) -> list[dict[str, float]]:
    """Every validation of the run, ``{"epoch": e, "<metric>": value, ...}``, from the CSV logger.

    ``logs`` is the logger's folder (or one ``metrics.csv``). A resumed run's logger starts a
    new ``metrics.csv``; the earlier ones are kept as ``metrics-part<N>.csv``
    (:func:`keep_earlier_metrics`) and read first, a later row winning for the same epoch.
    """
    files = [logs] if logs.suffix == ".csv" else [*sorted(logs.glob("metrics-part*.csv")), logs / "metrics.csv"]
    by_epoch: dict[float, dict[str, float]] = {}
    for metrics_csv in files:
        if not metrics_csv.is_file():
            continue
        with metrics_csv.open() as handle:
            for row in csv.DictReader(handle):
                values = {k[len("valid/") :]: float(v) for k, v in row.items() if k.startswith("valid/") and v}
                if values:
                    by_epoch[float(row["epoch"])] = {"epoch": float(row["epoch"]), **values}
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def check_resumable(checkpoint: Path, epochs: int) -> None:
    """Refuse, with the way out, a checkpoint that already trained past ``epochs`` (Lightning would
    stop with a MisconfigurationException deep inside ``fit``); the checkpoint is left as it is."""
    if not checkpoint.is_file():
        raise ConfigurationError(f"resume={checkpoint} is not a file; pass a Lightning last.ckpt, or ~ to start anew.")
    done = int(load_trusted(checkpoint).get("epoch", -1)) + 1
    if done > epochs:
        raise ConfigurationError(
            f"{checkpoint} has already trained {done} rounds/epochs, more than --epochs={epochs}. Raise --epochs to "
            f"continue that run, or pass another --checkpoint_dir to start a new one (the checkpoint is kept)."
        )


def keep_earlier_metrics(logs: Path) -> None:
    """Before a resumed run's logger rewrites ``metrics.csv``, keep the rows logged so far."""
    current = logs / "metrics.csv"
    if current.is_file():
        current.rename(logs / f"metrics-part{len(list(logs.glob('metrics-part*.csv')))}.csv")


def run_lightning(
    config: Any,
    model: torch.nn.Module,
    train_data: Any,
    valid_data: Any,
    test_data: Any,
    clock: RunClock | None = None,
) -> dict[str, Any]:
    """Train with Lightning and evaluate on test; returns metrics, paths and traffic.

    ``clock`` (started by the caller) is checkpointed with the run, so a resumed run's
    times include its earlier segments.
    """
    clock = clock or RunClock()
    keep_freed_memory()
    federated = bool(config["federated"])
    logger = logging.getLogger()
    # The clients as their devices hold them (noisy histories and their views), then the
    # attacker's clients; views come from each client's own training history only.
    population = build_population(config, model, train_data._dataset)
    partition, generation = population.partition, population.generation
    exposure = None
    if population.targets is not None:
        num_users = int(train_data._dataset.user_num)
        exposure = ExposureMeter(population.targets, config["topk"], population.clean_histories, num_users)
    if partition.skipped_users:
        logger.warning(
            "%d users have fewer than 2 training items and take no part in training", len(partition.skipped_users)
        )
    loader = client_loader(config, partition, federated)
    folder = Path(config["checkpoint_dir"]) / run_name(config)
    eval_step, patience = validation_schedule(config, federated)
    metric = str(config["valid_metric"]).lower()
    monitor = f"valid/{metric}"
    mode = "max" if config["valid_metric_bigger"] else "min"
    # best.ckpt after each validation that improves; last.ckpt after every round/epoch, so a
    # killed run loses at most one round.
    checkpoints = RunFolderCheckpoint(
        dirpath=folder, filename="best", monitor=monitor, mode=mode, save_top_k=1, enable_version_counter=False
    )
    every_round = RunFolderCheckpoint(  # no monitor, top 1: the newest round replaces the previous file
        dirpath=folder, filename="last", every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False
    )
    early_stopping = EarlyStopping(monitor=monitor, mode=mode, patience=patience)
    budgets = BudgetCheckpoints(checkpoints, list(config["round_budgets"] or []))
    callbacks: list[pl.Callback] = [checkpoints, every_round, early_stopping, clock, budgets]
    aggregation = AggregationCallback(config, loader.batch_sampler) if federated else None
    if aggregation is not None:
        callbacks.append(aggregation)
    if config["show_progress"]:
        callbacks.append(TQDMProgressBar())
    resume = config["resume"] or (str(folder / "last.ckpt") if (folder / "last.ckpt").is_file() else None)
    if resume:
        check_resumable(Path(resume), int(config["epochs"]))
        logger.info("resuming from %s", resume)
        keep_earlier_metrics(folder / "logs")
    # The CSV metrics are the run's state (a resumed run reads its validation curve from them);
    # TensorBoard's events are a log, in the run's log folder (recbole_lumos.run_log).
    loggers: list[Any] = [CSVLogger(str(folder), name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
        from pytorch_lightning.loggers import TensorBoardLogger

        log_dir = run_log_dir() or folder
        loggers.append(TensorBoardLogger(str(log_dir), name="tensorboard", version=""))
    except ImportError:
        pass
    trainer = pl.Trainer(
        max_epochs=int(config["epochs"]),
        check_val_every_n_epoch=eval_step,
        callbacks=callbacks,
        logger=loggers,
        accelerator="gpu" if torch.device(config["device"]).type == "cuda" else "cpu",
        devices=1,
        num_sanity_val_steps=0,
        enable_progress_bar=bool(config["show_progress"]),
        enable_model_summary=False,
        use_distributed_sampler=False,
        gradient_clip_val=None,
        deterministic=False,
        log_every_n_steps=1,
    )
    module = SequentialRecModule(model, config, federated, population.poisoning, exposure)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*(sampler|batch_sampler).*")
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=valid_data, ckpt_path=resume)
        curve = validation_curve(folder / "logs")
        step_key = eval_step_key(config, federated)
        budget_cut = ended_by_budget(trainer, early_stopping, curve, metric, federated, step_key)
        best_path = checkpoints.best_model_path
        if not best_path:  # fewer epochs/rounds than eval_step: no validation ran
            if not budget_cut:  # ended_by_budget said so already
                unit = "rounds" if federated else "epochs"
                logger.info(
                    "no validation during training (%d %s, %s=%d): evaluating the final model",
                    trainer.current_epoch, unit, step_key, eval_step,
                )
            best_path = str(folder / "last.ckpt")
        rounds = int(trainer.current_epoch)
        at_budgets = [
            {"rounds": b, **valid_and_test(trainer, module, path, valid_data, test_data)}
            for b in budgets.budgets
            if b < rounds and (path := BudgetCheckpoints.path(folder, b)).is_file()
        ]
        final = valid_and_test(trainer, module, Path(best_path), valid_data, test_data)
        best_valid, test_result = final["valid"], final["test"]
        # Early stopping ended the run before a budget: its final best model is the one it would have
        # reported at that budget. A budget past the run's own length (epochs) was never reached by any
        # run of this config, and is left out.
        at_budgets += [
            {"valid": best_valid, "test": test_result, "rounds": b}
            for b in budgets.budgets
            if rounds <= b <= int(config["epochs"])
        ]
        for entry in at_budgets:
            best = best_validation(curve, entry["rounds"], metric, bigger=mode == "max")
            entry["best_round"] = None if best is None else int(best["epoch"]) + 1
    history = aggregation.history if aggregation else []
    privacy = run_privacy(config, loader.batch_sampler, population, int(trainer.current_epoch)) if federated else None
    return {
        "best_valid_result": best_valid,
        "test_result": test_result,
        "rounds": rounds,
        "at_budgets": at_budgets,
        "run_folder": str(folder),
        "traffic": history,
        "dropped_clients": int(sum(t.get("dropped_clients", 0) for t in history)),
        "refused_updates": int(sum(t.get("refused_updates", 0) for t in history)),
        "clients": len(partition),
        "generation": generation,
        "valid_curve": curve,
        "ended_by_budget": budget_cut,
        "privacy": None if privacy is None else privacy.as_dict(),
        "attack": population.attack_summary(),
    }


def valid_and_test(
    trainer: pl.Trainer, module: pl.LightningModule, checkpoint: Path, valid_data: Any, test_data: Any
) -> dict[str, dict[str, float]]:
    """``{"valid": ..., "test": ...}`` of the model in ``checkpoint``, which stays loaded in ``module``."""
    module.load_state_dict(load_trusted(checkpoint)["state_dict"])
    trainer.validate(module, dataloaders=valid_data, verbose=False)
    valid = dict(module.last_result)
    trainer.test(module, dataloaders=test_data, verbose=False)
    return {"valid": valid, "test": dict(module.last_result)}


def run_privacy(config: Any, sampler: RoundSampler, population: Population, rounds: int) -> PrivacyBudget | None:
    """The run's (epsilon, delta) under local DP (None without ``ldp_clip``), logged.

    Participation is replayed from the sampler (a round's clients depend on ``(seed, round)``
    only), over the benign clients: the malicious ones skip local DP.
    """
    if not config["ldp_clip"]:
        return None
    delta = check_delta(config["ldp_delta"])
    counts = np.zeros(sampler.num_clients, dtype=np.int64)
    for round_index in range(rounds):
        counts[sampler.round_clients(round_index)] += 1
    benign = counts[population.benign_indices()]
    budget = privacy_budget(
        float(config["ldp_noise_multiplier"] or 0.0),
        float(config["ldp_clip"]),
        benign.tolist(),
        rounds,
        sampler.clients_per_round / sampler.num_clients,
        delta,
    )
    logging.getLogger().info(
        "local DP: epsilon %.4g against the server (%d of %d rounds), %.4g amplified (q = %.3g), delta %g",
        budget.epsilon,
        budget.client_rounds_max,
        budget.rounds,
        budget.epsilon_amplified,
        budget.sample_rate,
        budget.delta,
    )
    return budget


def ended_by_budget(
    trainer: pl.Trainer,
    early_stopping: EarlyStopping,
    curve: list[dict[str, float]],
    metric: str,
    federated: bool,
    step_key: str = "eval_step",
) -> bool:
    """True, with a warning, when the ``epochs`` budget ended a run that early stopping had not:
    its model may be cut off before convergence (measured on a sparse Amazon category: -20% HR@20).

    The warning says what happened: the best validation and how long ago it was, or, when
    no validation ran at all (``epochs`` below the validation step), just that."""
    if early_stopping.stopped_epoch or trainer.current_epoch < (trainer.max_epochs or 0):
        return False
    unit = "rounds" if federated else "epochs"
    scored = [row for row in curve if metric in row]
    logger = logging.getLogger()
    if not scored:
        logger.warning(
            "the run ended at its budget of %d %s with no validation (%s is %d, more than %d): the final "
            "model is evaluated. Raise --epochs, or lower --%s, to validate and stop early.",
            trainer.max_epochs,
            unit,
            step_key,
            trainer.check_val_every_n_epoch or 1,
            trainer.max_epochs,
            step_key,
        )
        return True
    best = max(scored, key=lambda row: row[metric])
    since = sum(1 for row in scored if row["epoch"] > best["epoch"])
    state = "was still improving" if since == 0 else f"had not improved for {since} validations"
    logger.warning(
        "the run ended at its budget of %d %s before early stopping: validation %s (best %s %.4f at %s %d). "
        "Raise --epochs to let early stopping decide.",
        trainer.max_epochs,
        unit,
        state,
        metric,
        best[metric],
        unit[:-1],
        int(best["epoch"]) + 1,
    )
    return True
