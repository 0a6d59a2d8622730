"""View blocks: anchor, F, R, then every counterfactual C, C2, ... as rows of one ``[3 + n_c, L]`` block."""

from __future__ import annotations

import pytest
import torch

from recbole_lumos.data.view_blocks import VIEW_ORDER, block_view_order, view_blocks
from recbole_lumos.errors import ConfigurationError


class TokenMaps:
    """The two maps of a RecBole dataset that blocks use: user ``k`` is ``u{k}``, item ``k`` is ``i{k}``."""

    uid_field, iid_field = "user_id", "item_id"

    def id2token(self, field: str, ids):
        return f"{'u' if field == self.uid_field else 'i'}{int(ids)}"

    def token2id(self, field: str, tokens):
        return [int(t[1:]) for t in tokens]


HISTORIES = {1: torch.tensor([1, 2, 3, 4, 5, 6]), 2: torch.tensor([7, 8]), 3: torch.tensor([9, 10])}
VIEWS = {
    "u1": {"F": ["i4", "i5", "i6", "i11"], "R": ["i1", "i12"], "C": ["i1", "i13"], "C2": ["i1", "i14"]},
    "u2": {"F": ["i7", "i8", "i15"], "R": ["i7", "i16"], "C": [], "C2": ["i7", "i18"], "C3": ["i19", "i20"]},
}  # u3 has no views


def test_rows_are_anchor_f_r_then_every_counterfactual_in_order():
    views = {**VIEWS, "u1": {**VIEWS["u1"], "C3": ["i1", "i17"]}}
    blocks = view_blocks(HISTORIES, views, TokenMaps(), max_len=4, num_counterfactuals=3)
    assert block_view_order(3) == ("F", "R", "C", "C2", "C3")
    assert all(block.shape == (6, 4) for block in blocks.values())
    assert blocks[1].tolist() == [
        [3, 4, 5, 6],  # anchor: the last max_len items of the training history
        [4, 5, 6, 11],  # F
        [1, 12, 0, 0],  # R, right-padded
        [1, 13, 0, 0],  # C
        [1, 14, 0, 0],  # C2
        [1, 17, 0, 0],  # C3
    ]
    assert blocks[2][3].tolist() == [0, 0, 0, 0] and blocks[2][5].tolist() == [19, 20, 0, 0]
    assert blocks[3].tolist() == [[0] * 4] * 6  # a user without views: all zeros, same shape


def test_one_counterfactual_keeps_the_four_row_block():
    blocks = view_blocks(HISTORIES, VIEWS, TokenMaps(), max_len=5)
    assert VIEW_ORDER == block_view_order(1) == ("F", "R", "C")
    assert all(block.shape == (4, 5) for block in blocks.values())
    assert blocks[1][3].tolist() == [1, 13, 0, 0, 0]  # C2 of the views is not used


def test_views_with_fewer_counterfactuals_than_asked_are_an_error():
    with pytest.raises(ConfigurationError, match="user u1 have no C3, C4"):
        view_blocks(HISTORIES, VIEWS, TokenMaps(), max_len=4, num_counterfactuals=4)
