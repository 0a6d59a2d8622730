"""The contract between the federated engine and a model: RecBole's, plus optional hooks.

RecBole's trainer needs only ``calculate_loss`` / ``predict``. The federated engine
trains any RecBole SASRec-family model on RecBole's layers, and a model with extra
client-side terms (CL4SRec, LUMOS) tells the engine about them through the hooks of
:class:`ContrastiveClientModel`. The engine reads them only through the functions
below, so the contract lives in one place.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class ContrastiveClientModel(Protocol):
    """A SASRec-family model whose client loss adds a term over a block of the client's own
    sequences (LUMOS: its anchor and F/R/C views; CL4SRec: two augmentations of each window).

    * ``all_positions_loss(inputs, targets, negatives, kind, views=None)``: the whole
      all-position loss of a batch of users (the reference and vmapped paths).
    * ``client_blocks(inputs [W, L], owner [W], num_clients, views [C, 4, L] | None)``:
      ``(blocks [K, R, L], block_owner [K])`` for the packed path, or ``None`` when no
      client has a non-zero term.
    * ``client_block_losses(z [K, R, d], blocks [K, R, L], item_vectors=None) -> [K]``: each
      client's own term, already weighted, from the final states of its block.
    * ``plain_next_item_loss``: True when the extra term is off (the model is SASRec).

    Optional, read with ``getattr``: ``block_items(blocks) -> [K, n] | None``, item-table
    rows the block term scores directly (passed to ``client_block_losses`` as
    ``item_vectors``; LUMOS's item-level negatives), and ``aug_weight`` with
    ``augmented_windows(views, negatives, owner)``, next-item windows cut from the views
    that join the client's own windows with that weight (LUMOS's ``lumos_aug_weight``).
    """

    plain_next_item_loss: bool

    def all_positions_loss(self, inputs, targets, negatives=None, kind="ce", views=None) -> torch.Tensor: ...

    def client_blocks(self, inputs, owner, num_clients, views): ...

    def client_block_losses(self, z: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor: ...


def has_client_term(model: nn.Module) -> bool:
    """Whether a client's loss has a term beyond the next-item loss."""
    return isinstance(model, ContrastiveClientModel) and not model.plain_next_item_loss


def needs_views(model: nn.Module) -> bool:
    """Whether training needs each user's generated views (LUMOS with ``lambda_cl > 0``)."""
    return bool(getattr(model, "needs_views", False))


def reads_client_views(model: nn.Module) -> bool:
    """Whether a *federated client's* loss reads its views.

    False for a model that needs views centrally but whose lone-client term is exactly
    zero (LUMOS without the counterfactual): the client then trains on the next-item
    loss alone and uploads no view row.
    """
    return needs_views(model) and not getattr(model, "lone_client_term_vanishes", False)


def client_loss_is_plain(model: nn.Module) -> bool:
    """Whether a federated client trains on the plain next-item loss only."""
    return not has_client_term(model) or (needs_views(model) and not reads_client_views(model))


def always_uploaded_rows(model: nn.Module) -> torch.Tensor:
    """Item-table rows every client uploads when its loss has a client term: the mask token
    (CL4SRec's augmentations may read it; whether one does is random, and the rows a client
    uploads must not be)."""
    mask = getattr(model, "mask_token", None)
    if mask is None or client_loss_is_plain(model):
        return torch.zeros(0, dtype=torch.long)
    return torch.tensor([int(mask)], dtype=torch.long)
