"""One round at the server, the same in both engines: check, aggregate, step.

The Lightning engine (:class:`~recbole_lumos.federated.callbacks.AggregationCallback`) and
the Flower ServerApp (:class:`~recbole_lumos.federated.flower.LumosStrategy`) both hand a
round's client updates to a :class:`ServerStep`:

1. :meth:`ServerStep.add` checks the update (:func:`~recbole_lumos.federated.update_checks.refusal`);
   a refused update is logged, counted and never aggregated;
2. the accepted updates are folded into the configured aggregator (``aggregator``);
3. :meth:`ServerStep.apply` steps the global backbone with the aggregate as pseudo-gradient
   (``server_optimizer``). A round in which no update was accepted (every sampled client
   dropped out or was refused) leaves the backbone and the optimiser's state as they are:
   there is no pseudo-gradient to step with.

The optimiser's state belongs to the run: :meth:`state_dict` is what the engines checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from recbole_lumos.federated.aggregators import Aggregator, build_aggregator
from recbole_lumos.federated.server_optimizer import ServerOptimizer, apply_aggregate, build_server_optimizer
from recbole_lumos.federated.update import ClientUpdate
from recbole_lumos.federated.update_checks import refusal


class ServerStep:
    """The server's half of a round over the global backbone ``params`` (named parameters)."""

    def __init__(self, params: Mapping[str, torch.nn.Parameter], config: Any) -> None:
        self.params = dict(params)
        self.shapes = {name: p.shape for name, p in self.params.items()}
        self.config = config
        self.name = str(config["aggregator"] or "fedavg")
        self.optimizer: ServerOptimizer = build_server_optimizer(self.params, config)
        self.aggregator: Aggregator = build_aggregator(self.name, self.shapes, config)
        self.round = 0
        self.accepted = 0
        """Updates accepted this round."""
        self.refused = 0
        """Updates refused this round."""

    def start_round(self, round_index: int) -> None:
        self.aggregator = build_aggregator(self.name, self.shapes, self.config)
        self.round, self.accepted, self.refused = round_index, 0, 0

    def add(self, update: ClientUpdate, max_weight: float | None = None, client: Any = "?") -> bool:
        """Fold in one client's update if it passes the checks; False (logged) when refused."""
        reason = refusal(update, self.shapes, max_weight)
        if reason is not None:
            self.refused += 1
            logging.getLogger().warning("round %d: refused the update of client %s: %s", self.round, client, reason)
            return False
        self.aggregator.add(update)
        self.accepted += 1
        return True

    def apply(self) -> None:
        """Step the backbone with the round's aggregate (nothing when no update was accepted)."""
        aggregate = self.aggregator.result()
        if not self.accepted:
            logging.getLogger().warning("round %d: no client update to aggregate; the model is unchanged", self.round)
            return
        apply_aggregate(self.optimizer, self.params, aggregate, self.aggregator.sent_rows)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
