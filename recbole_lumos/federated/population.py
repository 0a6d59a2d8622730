"""Who takes part in a run: the benign clients, as their devices hold them, and the attacker's clients.

Benign clients are RecBole's users with their training histories, after the noise a
device adds (``noise_ratio``, :mod:`recbole_lumos.data.noise`), and, for LUMOS,
the views their generator writes from those noisy histories. The attacker's clients
(``attack``, :mod:`recbole_lumos.federated.attacks`) come after them with fresh
user ids, their own histories and their own view blocks; the round sampler sees one
list of clients and draws from it without knowing who is who.

Views of noisy histories are cached in their own folder
(:func:`~recbole_lumos.data.noise.views_config`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recbole_lumos.data.noise import client_histories, noise_ratio, views_config
from recbole_lumos.data.partition import ClientPartition, training_histories
from recbole_lumos.data.view_blocks import randomize_counterfactuals, view_blocks
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.attacks import (
    AttackSettings,
    FakeClients,
    ModelPoisoning,
    fake_clients,
    item_popularity,
    target_item_ids,
)
from recbole_lumos.federated.client_model import needs_views


@dataclass
class Population:
    """A run's clients (benign first, then fake) and what the attack and its measurement need."""

    partition: ClientPartition
    clean_histories: dict[int, torch.Tensor]
    """Benign users' training histories without noise: what "has interacted" means for ER@K."""
    settings: AttackSettings = field(default_factory=AttackSettings)
    fake: FakeClients = field(default_factory=lambda: FakeClients({}))
    targets: np.ndarray | None = None
    """Internal ids of the target items (when exposure is measured)."""
    target_tokens: list[str] = field(default_factory=list)
    poisoning: ModelPoisoning | None = None
    generation: dict[str, Any] | None = None

    def benign_indices(self) -> list[int]:
        """Partition indices of the benign clients."""
        fake = set(self.fake.histories)
        return [i for i, client in enumerate(self.partition.clients) if client.user not in fake]

    def attack_summary(self) -> dict[str, Any] | None:
        """What the result JSON records about the attack (None when nothing is attacked or measured)."""
        if not self.settings.measures_exposure:
            return None
        return {
            "attack": self.settings.attack,
            "attack_ratio": self.settings.ratio if self.settings.active else 0.0,
            "malicious_clients": len(self.fake.histories),
            "benign_clients": len(self.partition) - len(self.fake.histories),
            "target_items": self.target_tokens,
        }


def client_view_blocks(
    config: Any, histories: dict[int, torch.Tensor], train_dataset: Any
) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    """Each client's view block (``[4, L]``: anchor, F, R, C) and what the generation did.

    The one path from the views to the clients, for the in-process population and a Flower
    SuperNode's shard alike: :func:`~recbole_lumos.generation.ensure_views` (which also makes
    the ``lumos_view_space: random`` views of LUMOS-randViews), the blocks, then random
    counterfactual items for ``lumos_counterfactual_items: random`` (LUMOS-randC). Every
    step depends on ``(seed, user)`` only, so a shard's blocks are the whole run's.
    """
    from recbole_lumos.generation import ensure_views
    from recbole_lumos.generation.settings import GeneratorSettings

    max_len = int(config["MAX_ITEM_LIST_LENGTH"])
    view_set = ensure_views(config, train_dataset, train_dataset)
    num_counterfactuals = int(config["lumos_num_counterfactuals"] or 1)
    blocks = view_blocks(histories, view_set.views, train_dataset, max_len, num_counterfactuals)
    source = str(config["lumos_counterfactual_items"] or "generated")
    if source not in ("generated", "random"):
        raise ConfigurationError(f"lumos_counterfactual_items must be 'generated' or 'random', got {source!r}.")
    if source == "random":  # the LUMOS-randC ablation
        seed = GeneratorSettings.from_config(config).views_seed  # the views' own seed
        blocks = randomize_counterfactuals(blocks, histories, int(train_dataset.item_num), seed)
    missing = sum(int(not block.any()) for block in blocks.values())
    if missing:
        logging.getLogger().warning("%d users have no views and train on the next-item loss alone", missing)
    return blocks, {"mode": view_set.mode, "path": str(view_set.path), **view_set.stats}


def build_population(config: Any, model: torch.nn.Module, train_dataset: Any) -> Population:
    """Every client of the run: noisy benign histories and views, then the attacker's clients."""
    logger = logging.getLogger()
    settings = AttackSettings.from_config(config)
    if settings.poisons_updates and not config["federated"]:
        raise ConfigurationError(
            f"attack={settings.attack} poisons client updates, which only a federated run has; use a data "
            f"poisoning attack (random, popular, bandwagon) centrally, or --federated=True."
        )
    histories = client_histories(train_dataset, config)
    clean = training_histories(train_dataset) if noise_ratio(config) else histories
    max_len = int(config["MAX_ITEM_LIST_LENGTH"])
    num_counterfactuals = int(config["lumos_num_counterfactuals"] or 1)
    blocks, generation = None, None
    if needs_views(model):
        # Views come from each client's own (noisy) training history only.
        blocks, generation = client_view_blocks(views_config(config), histories, train_dataset)
    num_items, seed = int(train_dataset.item_num), int(config["seed"])
    targets, tokens, fake = None, [], FakeClients({}, {} if blocks is not None else None)
    if settings.measures_exposure:
        token_to_id = train_dataset.field2token_id[train_dataset.iid_field]
        targets = target_item_ids(settings.targets, item_popularity(clean, num_items), seed, token_to_id)
        tokens = [str(t) for t in train_dataset.id2token(train_dataset.iid_field, targets)]
        view_shape = None
        if blocks is not None:
            view_shape = {
                "max_len": max_len,
                "k_f": int(config["k_f"] or 0),
                "rho_r": float(config["rho_r"] or 0.0),
                "num_counterfactuals": num_counterfactuals,
            }
        fake = fake_clients(settings, clean, targets, int(train_dataset.user_num), num_items, seed, view_shape)
        if settings.active:
            logger.info(
                "attack %s: %d malicious clients (ids %d..%d) against %d target items %s",
                settings.attack,
                len(fake.histories),
                fake.users[0],
                fake.users[-1],
                len(tokens),
                " ".join(tokens),
            )
    stride = int(config["window_stride"]) if config["window_stride"] else None
    partition = ClientPartition(
        {**histories, **fake.histories}, max_len, stride, None if blocks is None else {**blocks, **fake.blocks}
    )
    poisoning = None
    if settings.poisons_updates:
        poisoning = ModelPoisoning(settings.attack, fake.users, settings.scale, settings.std, seed)
    return Population(partition, clean, settings, fake, targets, tokens, poisoning, generation)
