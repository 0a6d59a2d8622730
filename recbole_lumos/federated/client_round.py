"""One round on the client side: the one function every engine calls.

The Lightning module (:class:`~recbole_lumos.federated.module.SequentialRecModule`)
and the Flower ClientApp (:mod:`recbole_lumos.federated.flower`) both train a cohort
of clients with :func:`train_cohort_round`. It runs the clients' local epochs from
the global weights (:meth:`LocalTrainer.cohort_updates`, packed, vmapped or one by
one), then applies local DP when it is configured. What leaves the client is what
this function returns; nothing else differs between the engines. In a run under
model poisoning (:mod:`~recbole_lumos.federated.attacks`) a malicious client sends its
poisoned update instead (and skips local DP: it controls its device).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from recbole_lumos.data.partition import Cohort
from recbole_lumos.federated.attacks import ModelPoisoning
from recbole_lumos.federated.local_update import LocalTrainer
from recbole_lumos.federated.privacy import privatize
from recbole_lumos.federated.update import ClientUpdate


def round_seed(seed: int, round_index: int) -> int:
    """The global torch RNG of a round (dropout layers).

    The seeding rule of a round, the same in both engines: the Lightning module seeds these
    at the start of a round, a Flower SuperNode for the cohorts it trains.
    """
    return seed * 100_003 + round_index


def negatives_seed(seed: int, round_index: int) -> int:
    """The round's stream of sampled negatives; its cohorts draw from it in training order."""
    return seed * 100_019 + round_index


def noise_seed(seed: int, round_index: int) -> int:
    """The round's stream of local DP noise."""
    return seed * 100_043 + round_index


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
    poisoning: ModelPoisoning | None = None,
    round_index: int = 0,
) -> list[ClientUpdate]:
    """Every client of ``cohort``'s upload for this round, in cohort order.

    ``negatives`` seeds the sampled negatives, ``noise`` the local DP noise; both are
    the caller's so that a round is reproducible (the engines seed them by round).
    ``poisoning`` replaces its malicious clients' uploads (``round_index`` seeds it);
    the benign clients' uploads are the same with or without it.
    """
    updates = trainer.cohort_updates(global_params, cohort, negatives, one_by_one)
    honest = updates
    if privacy.clip is not None:
        shapes = {name: p.shape for name, p in global_params.items()}
        # Every client draws its noise, malicious or not, so the benign clients' noise does not
        # depend on who is malicious.
        updates = [privatize(u, privacy.clip, privacy.noise_multiplier, shapes, noise) for u in updates]
    if poisoning is None:
        return updates
    users = cohort.users.tolist()
    return [
        poisoning.apply(raw, user, round_index) if poisoning.is_malicious(user) else sent
        for user, raw, sent in zip(users, honest, updates, strict=True)
    ]
