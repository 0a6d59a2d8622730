"""Cross-cutting behaviour at Lightning's hooks: aggregation at the end of a round."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

from recbole_lumos.federated.accounting import RoundTraffic, tensor_bytes
from recbole_lumos.federated.aggregators import build_aggregator


class AggregationCallback(pl.Callback):
    """Folds each cohort's client updates into the aggregator and, when the round's last
    cohort is done, applies ``global += server_lr * aggregate`` to the global backbone.

    It aggregates on the last training batch rather than in ``on_train_epoch_end``
    because Lightning runs validation *before* ``on_train_epoch_end``; validation must
    see the aggregated model. It also counts the bytes sent down (the global backbone,
    once per sampled client) and up (each client's real upload tensors).
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        self.name = str(config["aggregator"] or "fedavg")
        self.server_lr = float(config["server_lr"] if config["server_lr"] is not None else 1.0)
        self.aggregator = None
        self.traffic = RoundTraffic()
        self.history: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = dict(pl_module.model.named_parameters())
        shapes = {name: p.shape for name, p in params.items()}
        self.aggregator = build_aggregator(self.name, shapes, self.config)
        self.traffic = RoundTraffic(down_per_client=tensor_bytes(params.values()))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        for update in outputs["updates"]:
            self.aggregator.add(update)
            self.traffic.up.append(update.num_bytes())
        if batch_idx + 1 == trainer.num_training_batches:
            self._apply(trainer, pl_module)

    @torch.no_grad()
    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        aggregate = self.aggregator.result()
        for name, p in pl_module.model.named_parameters():
            p.add_(aggregate[name].to(p.device, p.dtype), alpha=self.server_lr)
        summary = {
            "round": float(trainer.current_epoch),
            "clients": float(self.traffic.clients),
            **self.traffic.summary(),
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

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
