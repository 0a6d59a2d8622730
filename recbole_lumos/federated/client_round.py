"""One round on the client side: the one function every engine calls.

The Lightning module (:class:`~recbole_lumos.federated.module.SequentialRecModule`)
and the Flower ClientApp (:mod:`recbole_lumos.federated.flower`) both train a cohort
of clients with :func:`train_cohort_round`. It runs the clients' local epochs from
the global weights (:meth:`LocalTrainer.cohort_updates`, packed, vmapped or one by
one), then applies local DP when it is configured. What leaves the client is what
this function returns; nothing else differs between the engines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from recbole_lumos.data.partition import Cohort
from recbole_lumos.federated.local_update import LocalTrainer
from recbole_lumos.federated.privacy import privatize
from recbole_lumos.federated.update import ClientUpdate


@dataclass(frozen=True)
class PrivacySettings:
    """Client-side local DP (``ldp_clip``, ``ldp_noise_multiplier``); off when ``clip`` is None."""

    clip: float | None = None
    noise_multiplier: float = 0.0

    @classmethod
    def from_config(cls, config: Any) -> PrivacySettings:
        clip = config["ldp_clip"]
        return cls(
            clip=float(clip) if clip else None,
            noise_multiplier=float(config["ldp_noise_multiplier"] or 0.0),
        )


def train_cohort_round(
    trainer: LocalTrainer,
    global_params: Mapping[str, torch.Tensor],
    cohort: Cohort,
    negatives: torch.Generator | None,
    noise: torch.Generator | None,
    privacy: PrivacySettings,
    one_by_one: bool = False,
) -> list[ClientUpdate]:
    """Every client of ``cohort``'s upload for this round, in cohort order.

    ``negatives`` seeds the sampled negatives, ``noise`` the local DP noise; both are
    the caller's so that a round is reproducible (the engines seed them by round).
    """
    updates = trainer.cohort_updates(global_params, cohort, negatives, one_by_one)
    if privacy.clip is None:
        return updates
    shapes = {name: p.shape for name, p in global_params.items()}
    return [privatize(u, privacy.clip, privacy.noise_multiplier, shapes, noise) for u in updates]
