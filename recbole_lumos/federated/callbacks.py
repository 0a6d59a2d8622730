"""Cross-cutting behaviour at Lightning's hooks: aggregation at the end of a round, the
run's clock across resumed segments, checkpoints that survive a moved run folder, and the
best model as it stood at fixed round budgets."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from recbole_lumos.data.partition import RoundSampler
from recbole_lumos.federated.accounting import RoundTraffic, tensor_bytes
from recbole_lumos.federated.allocator import release_freed_memory
from recbole_lumos.federated.server_optimizer import ServerOptimizer
from recbole_lumos.federated.server_step import ServerStep


class AggregationCallback(pl.Callback):
    """Hands each cohort's client updates to the :class:`ServerStep` (checked, then folded
    into the aggregator) and, when the round's last cohort is done, steps the global
    backbone with the aggregate as pseudo-gradient (``server_optimizer``; plain ``sgd``
    is ``global += server_lr * aggregate``).

    It aggregates on the last training batch rather than in ``on_train_epoch_end``
    because Lightning runs validation *before* ``on_train_epoch_end``; validation must
    see the aggregated model. It also counts the bytes sent down (the global backbone,
    once per sampled client, dropped ones included) and up (each client's real upload
    tensors), the sampled clients that never answered (``client_dropout``, from
    ``sampler``) and the updates the server refused.
    """

    def __init__(self, config: Any, sampler: RoundSampler | None = None) -> None:
        self.config = config
        self.sampler = sampler
        self.server: ServerStep | None = None
        self._server_state: dict[str, Any] | None = None  # restored before the server step exists
        self.traffic = RoundTraffic()
        self.history: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = dict(pl_module.model.named_parameters())
        server = self._server(pl_module)
        server.start_round(trainer.current_epoch)
        dropped = self.sampler.dropped(trainer.current_epoch) if self.sampler is not None else []
        self.traffic = RoundTraffic(down_per_client=tensor_bytes(params.values()))
        self._dropped = len(dropped)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        users = outputs.get("users") or [None] * len(outputs["updates"])
        bounds = outputs.get("max_weights") or [None] * len(outputs["updates"])
        for update, user, bound in zip(outputs["updates"], users, bounds, strict=True):
            self.traffic.up.append(update.num_bytes())
            self.server.add(update, bound, user)
        if batch_idx + 1 == trainer.num_training_batches:
            self._apply(trainer, pl_module)

    def _server(self, pl_module: pl.LightningModule) -> ServerStep:
        if self.server is None:
            self.server = ServerStep(dict(pl_module.model.named_parameters()), self.config)
            if self._server_state is not None:
                self.server.load_state_dict(self._server_state)
                self._server_state = None
        return self.server

    @property
    def server_optimizer(self) -> ServerOptimizer | None:
        return None if self.server is None else self.server.optimizer

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.server.apply()
        summary = {
            "round": float(trainer.current_epoch),
            "clients": float(self.traffic.clients),
            **self.traffic.summary(),
            "dropped_clients": float(self._dropped),
            "refused_updates": float(self.server.refused),
        }
        self.history.append(summary)
        logging.getLogger().info(
            "round %d: %d clients, up %.0f B/client (%.1f MB), down %.0f B/client (%.1f MB)",
            trainer.current_epoch,
            self.traffic.clients,
            summary["bytes_up_per_client"],
            summary["bytes_up_round"] / 1e6,
            summary["bytes_down_per_client"],
            summary["bytes_down_round"] / 1e6,
        )
        pl_module.log_dict(
            {f"traffic/{k}": v for k, v in summary.items() if k != "round"}, on_epoch=True, on_step=False
        )
        release_freed_memory()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        release_freed_memory()

    def state_dict(self) -> dict[str, Any]:
        server = self.server.state_dict() if self.server is not None else self._server_state
        return {"history": self.history, "server_optimizer": server}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.server = None
        self._server_state = state_dict.get("server_optimizer")


class RunClock(pl.Callback):
    """Wall and CPU seconds of a run summed over its segments.

    A run killed and resumed from ``last.ckpt`` would otherwise report only its last
    segment's time. The clock travels in the checkpoint (Lightning saves callback
    state), so ``earlier_*`` is what the segments before this process spent, and
    ``complete`` is False when the run resumed from a checkpoint written before the
    clock existed (its earlier time is unknown).
    """

    def __init__(self) -> None:
        self.earlier_wall_s = 0.0
        self.earlier_cpu_s = 0.0
        self.complete = True
        self._restored = False
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()

    def totals(self) -> tuple[float, float]:
        """``(wall_s, cpu_s)`` of every segment so far, this one included."""
        return (
            self.earlier_wall_s + time.perf_counter() - self._wall0,
            self.earlier_cpu_s + time.process_time() - self._cpu0,
        )

    def state_dict(self) -> dict[str, Any]:
        wall, cpu = self.totals()
        return {"wall_s": wall, "cpu_s": cpu, "complete": self.complete}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.earlier_wall_s = float(state_dict.get("wall_s", 0.0))
        self.earlier_cpu_s = float(state_dict.get("cpu_s", 0.0))
        self.complete = bool(state_dict.get("complete", True))
        self._restored = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning restores callback state before this hook, and only for callbacks the
        # checkpoint has: resuming without a restored clock means the earlier time is unknown.
        if trainer.ckpt_path and not self._restored:
            self.complete = False


class RunFolderCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` for a self-contained run folder that may be moved.

    Lightning compares the saved ``dirpath`` with the current one and, when they
    differ, forgets the best score and keeps the old absolute paths: a run resumed
    from a moved or copied folder would then take its next validation as "best"
    and overwrite ``best.ckpt`` with a worse model, or load a best checkpoint from
    the old place. The files of a run live in its own folder, so the saved paths are
    re-based onto the current folder instead, and the scores are kept.
    """

    def _ModelCheckpoint__warn_if_dir_not_empty(self, dirpath: Any) -> None:
        """No "checkpoint directory exists and is not empty" warning: the run folder holds the run's
        own logs from the start (it fired on every first run), and a rerun resumes from its
        checkpoints on purpose (:func:`~recbole_lumos.federated.runner.run_lightning`)."""

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's own key, so checkpoints written by a plain ModelCheckpoint restore here
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and saved != self.dirpath:

            def rebase(path: Any) -> Any:
                return str(Path(self.dirpath) / Path(path).name) if path else path

            state_dict = {**state_dict, "dirpath": self.dirpath}
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                state_dict[key] = rebase(state_dict.get(key))
            state_dict["best_k_models"] = {rebase(k): v for k, v in state_dict.get("best_k_models", {}).items()}
        super().load_state_dict(state_dict)


class BudgetCheckpoints(pl.Callback):
    """Keeps the best checkpoint as it stood after ``budgets`` rounds (epochs, central), as
    ``best-round<B>.ckpt``: the model a run stopped at round B would have chosen by validation.

    Published federated results often train for a fixed number of rounds; evaluating these files
    afterwards gives test metrics at each budget without evaluating test during training (which
    could not influence training, but would cost a test pass per validation). Copying a file
    touches no random state, so a run's numbers are the same with or without budgets.
    Lightning validates before ``on_train_epoch_end``, so the copy sees round B's validation.
    """

    def __init__(self, best: ModelCheckpoint, budgets: list[int]) -> None:
        self.best = best
        self.budgets = sorted({int(b) for b in budgets if int(b) > 0})

    @staticmethod
    def path(folder: Path, budget: int) -> Path:
        return Path(folder) / f"best-round{budget}.ckpt"

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rounds_done = trainer.current_epoch + 1
        if rounds_done in self.budgets and self.best.best_model_path and self.best.dirpath:
            shutil.copyfile(self.best.best_model_path, self.path(Path(self.best.dirpath), rounds_done))
