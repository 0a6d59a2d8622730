"""Contrastive losses stay finite in half precision: masks fill with a dtype-aware large negative."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbole_lumos.model.losses import large_negative, nt_xent, similarity
from recbole_lumos.model.lumos import tri_view_loss

HALF = [torch.bfloat16, torch.float16]


def views(dtype: torch.dtype, users: int = 6, dim: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(users, dim, generator=generator).to(dtype).requires_grad_() for _ in range(3)]


def padded(users: int = 6) -> torch.Tensor:
    """The last two users are padding (all-zero windows under vmap): masked everywhere."""
    return torch.arange(users) < users - 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF])
def test_large_negative_is_finite_and_vanishes_in_softmax(dtype: torch.dtype) -> None:
    fill = torch.tensor(large_negative(dtype), dtype=dtype)
    assert torch.isfinite(fill)
    logits = torch.tensor([3.0, 0.0], dtype=dtype).masked_fill(torch.tensor([False, True]), large_negative(dtype))
    assert torch.softmax(logits.float(), 0).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("sim", ["dot", "cos"])
def test_nt_xent_is_finite_in_half_precision_with_padding(dtype: torch.dtype, sim: str) -> None:
    z1, z2, _ = views(dtype)
    loss = nt_xent(z1, z2, tau=0.5, sim=sim, valid=padded())
    assert loss.dtype == dtype and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    reference = nt_xent(z1.detach().double(), z2.detach().double(), tau=0.5, sim=sim, valid=padded())
    assert float(loss.detach()) == pytest.approx(float(reference), rel=0.05)


@pytest.mark.parametrize("dtype", HALF)
def test_tri_view_loss_is_finite_in_half_precision_with_padding(dtype: torch.dtype) -> None:
    h, positive, counterfactual = views(dtype)
    loss = tri_view_loss(h, [positive], counterfactual, tau=0.2, sim="cos", w_c=0.5, valid=padded())
    assert loss.dtype == dtype and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in (h, positive, counterfactual))


def test_float32_nt_xent_is_bit_identical_to_the_old_minus_1e9_fill() -> None:
    z1, z2, _ = (t.detach() for t in views(torch.float32))
    valid = padded()
    n = z1.size(0)
    z = torch.cat([z1, z2])
    logits = similarity(z, z, "cos") / 0.3
    keep = torch.cat([valid, valid])
    blocked = torch.eye(2 * n, dtype=torch.bool) | ~keep.unsqueeze(0)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    losses = F.cross_entropy(logits.masked_fill(blocked, -1e9), targets, reduction="none")
    weights = keep.float()
    old = (losses * weights).sum() / weights.sum()
    assert torch.equal(nt_xent(z1, z2, tau=0.3, sim="cos", valid=valid), old)
