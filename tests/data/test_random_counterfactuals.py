"""The LUMOS-randC ablation: counterfactual layout kept, the items the generator brought in drawn at random."""

import pytest
import torch

from recbole_lumos.data.view_blocks import randomize_counterfactuals
from recbole_lumos.errors import ConfigurationError


def test_only_the_brought_in_items_change_and_never_to_history_items():
    history = torch.tensor([3, 4, 5, 6])
    block = torch.tensor(
        [
            [3, 4, 5, 6, 0],  # anchor
            [4, 5, 6, 40, 0],  # F (kept as is)
            [3, 30, 5, 6, 0],  # R (kept as is)
            [3, 4, 50, 51, 0],  # C: 50, 51 brought in
            [3, 52, 5, 53, 0],  # C2: 52, 53 brought in
        ]
    )
    out = randomize_counterfactuals({7: block}, {7: history}, num_items=100, seed=1)[7]
    assert torch.equal(out[:3], block[:3])
    kept = (block[3:] > 0) & torch.isin(block[3:], history)
    assert torch.equal(out[3:][kept], block[3:][kept])
    assert torch.equal(out[3:] == 0, block[3:] == 0)
    changed = out[3:][~kept & (block[3:] > 0)]
    assert not torch.isin(changed, history).any() and bool((changed > 0).all())
    assert not torch.equal(changed, torch.tensor([50, 51, 52, 53]))
    again = randomize_counterfactuals({7: block}, {7: history}, num_items=100, seed=1)[7]
    assert torch.equal(out, again)
    other = randomize_counterfactuals({7: block}, {7: history}, num_items=100, seed=2)[7]
    assert not torch.equal(out, other)


def test_a_user_who_has_seen_everything_is_a_clear_error():
    history = torch.tensor([1, 2, 3])
    block = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 9, 0]])
    with pytest.raises(ConfigurationError, match="seen every item"):
        randomize_counterfactuals({0: block}, {0: history}, num_items=4, seed=0)
