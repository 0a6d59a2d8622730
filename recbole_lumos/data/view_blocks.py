"""LUMOS views joined to clients by user: tokens from the views file -> ``[3 + n_c, L]`` id blocks.

Each block holds the user's anchor sequence (the last ``L`` items of its training
history, row 0), its F and R views (rows 1, 2) and its ``n_c`` counterfactuals C, C2,
... (rows 3 to ``2 + n_c``, ``n_c = lumos_num_counterfactuals``), right-padded like
RecBole sequences. With ``n_c = 1`` that is the ``[4, L]`` block of anchor, F, R, C. A
block is built from one user's own views and history and handed only to that user's
:class:`~recbole_lumos.data.partition.ClientData`; nothing crosses users.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.generation.settings import view_names

VIEW_ORDER = ("F", "R", "C")
"""Rows 1, 2, 3 of a block of one counterfactual; :func:`block_view_order` for any ``n_c``."""


def block_view_order(num_counterfactuals: int = 1) -> tuple[str, ...]:
    """The views of rows 1, 2, ... of a block: ``("F", "R", "C", "C2", ..., "C{n_c}")``."""
    return view_names(num_counterfactuals)


def _right_padded(ids: Sequence[int], max_len: int) -> torch.Tensor:
    row = torch.zeros(max_len, dtype=torch.long)
    kept = list(ids)[-max_len:]
    row[: len(kept)] = torch.tensor(kept, dtype=torch.long)
    return row


def view_blocks(
    histories: Mapping[int, torch.Tensor],
    views: Mapping[str, Mapping[str, Sequence[str]]],
    dataset: Any,
    max_len: int,
    num_counterfactuals: int = 1,
) -> dict[int, torch.Tensor]:
    """Internal user id -> ``[3 + num_counterfactuals, max_len]`` block (all zeros for a user without views).

    ``views`` maps user tokens to ``{"F": [item tokens], "R": ..., "C": ..., "C2": ...}``
    as :func:`recbole_lumos.generation.ensure_views` returns them; ``dataset`` is any
    RecBole dataset of the run (for the token <-> id maps). Views lacking one of the
    ``num_counterfactuals`` counterfactuals are a :class:`ConfigurationError`: they were
    made for a smaller ``lumos_num_counterfactuals``, and an empty row would be a silent
    all-padding negative.
    """
    order = block_view_order(num_counterfactuals)
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    blocks: dict[int, torch.Tensor] = {}
    for user, history in histories.items():
        block = torch.zeros(1 + len(order), max_len, dtype=torch.long)
        token = str(dataset.id2token(uid_field, user))
        own = views.get(token)
        if own is not None:
            missing = [name for name in order if name not in own]
            if missing:
                raise ConfigurationError(
                    f"the views of user {token} have no {', '.join(missing)}: they were made for fewer "
                    f"counterfactuals than lumos_num_counterfactuals={num_counterfactuals}. Pass the views that "
                    "ensure_views returns for the same config."
                )
            block[0] = _right_padded(history.tolist(), max_len)
            for row, name in enumerate(order, start=1):
                ids = dataset.token2id(iid_field, list(own[name])) if len(own[name]) else []
                block[row] = _right_padded([int(i) for i in ids], max_len)
        blocks[user] = block
    return blocks


def randomize_counterfactuals(
    blocks: Mapping[int, torch.Tensor], histories: Mapping[int, torch.Tensor], num_items: int, seed: int
) -> dict[int, torch.Tensor]:
    """The ``LUMOS-randC`` ablation (``lumos_counterfactual_items: random``): every counterfactual
    keeps its layout, but each item it brought in (one not in the user's training history) is
    replaced by an item drawn uniformly from the catalogue outside that history.

    This isolates what the language model's choice of contradicting items adds over any
    negatives of the same shape. Draws depend on ``(seed, user)`` only, like the views.
    """
    out: dict[int, torch.Tensor] = {}
    for user, block in blocks.items():
        block = block.clone()
        seen = histories[user]
        rows = block[3:]
        brought = (rows > 0) & ~torch.isin(rows, seen)
        count = int(brought.sum())
        if count:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + int(user))
            drawn: list[int] = []
            excluded = set(seen.tolist()) | {0}
            if len(excluded) >= num_items:
                raise ConfigurationError(f"user {user} has seen every item: no random counterfactual item is left.")
            while len(drawn) < count:
                for item in torch.randint(1, num_items, (2 * count,), generator=generator).tolist():
                    if item not in excluded and len(drawn) < count:
                        drawn.append(item)
            rows[brought] = torch.tensor(drawn, dtype=block.dtype)
        out[user] = block
    return out
