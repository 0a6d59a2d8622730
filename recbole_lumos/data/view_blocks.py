"""LUMOS views joined to clients by user: tokens from the views file -> ``[4, L]`` id blocks.

Each block holds the user's anchor sequence (the last ``L`` items of its training
history) and its F, R and C views, right-padded like RecBole sequences. A block
is built from one user's own views and history and handed only to that user's
:class:`~recbole_lumos.data.partition.ClientData`; nothing crosses users.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

VIEW_ORDER = ("F", "R", "C")


def _right_padded(ids: Sequence[int], max_len: int) -> torch.Tensor:
    row = torch.zeros(max_len, dtype=torch.long)
    kept = list(ids)[-max_len:]
    row[: len(kept)] = torch.tensor(kept, dtype=torch.long)
    return row


def view_blocks(
    histories: Mapping[int, torch.Tensor],
    views: Mapping[str, Mapping[str, Sequence[str]]],
    dataset,
    max_len: int,
) -> dict[int, torch.Tensor]:
    """Internal user id -> ``[4, max_len]`` block (all zeros for a user without views).

    ``views`` maps user tokens to ``{"F": [item tokens], ...}`` as
    :func:`recbole_lumos.generation.ensure_views` returns them; ``dataset`` is any
    RecBole dataset of the run (for the token <-> id maps).
    """
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    blocks: dict[int, torch.Tensor] = {}
    for user, history in histories.items():
        block = torch.zeros(1 + len(VIEW_ORDER), max_len, dtype=torch.long)
        own = views.get(str(dataset.id2token(uid_field, user)))
        if own is not None:
            block[0] = _right_padded(history.tolist(), max_len)
            for row, name in enumerate(VIEW_ORDER, start=1):
                ids = dataset.token2id(iid_field, list(own[name])) if len(own[name]) else []
                block[row] = _right_padded([int(i) for i in ids], max_len)
        blocks[user] = block
    return blocks
