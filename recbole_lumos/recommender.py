"""Building a recommender for a run: the model class, plus its text-aware item table.

The one place that joins a model (``model/``) with the catalogue's text embeddings
(``generation/``), so that neither package imports the other for it. Every entry
point builds through :func:`build_recommender`: the CLI, checkpoint reloading and the
Flower app.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.model.item_text import ITEM_TEXT_MODES, apply_item_text, text_aware_class


def item_text_mode(config: Any) -> str:
    """``item_text`` (``none`` when unset), checked."""
    mode = str(config["item_text"] if config["item_text"] is not None else "none")
    if mode not in ITEM_TEXT_MODES:
        raise ConfigurationError(
            f"item_text is {mode!r}, but it must be one of {', '.join(ITEM_TEXT_MODES)} (none: ID embeddings only; "
            "init: the table starts from the item texts; fusion: the texts stay in every item's representation). "
            "For example --item_text=fusion."
        )
    return mode


def build_recommender(model_class: type, config: Any, dataset: Any) -> nn.Module:
    """``model_class(config, dataset)``, its item table made text-aware as ``item_text`` says.

    The text embeddings come from ``lumos_item_encoder`` (cached beside the views).
    They are public catalogue data: nothing about any user goes into them.
    """
    mode = item_text_mode(config)
    if mode == "none":
        return model_class(config, dataset)
    from recbole_lumos.generation.catalogue import catalogue_embeddings

    model = (text_aware_class(model_class) if mode == "fusion" else model_class)(config, dataset)
    text = torch.from_numpy(catalogue_embeddings(config, dataset))
    return apply_item_text(model, mode, text, model.n_items)
