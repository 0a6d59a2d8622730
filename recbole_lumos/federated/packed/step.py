"""The optimiser's first step in closed form: a client's update from its gradient alone.

With ``local_epochs == 1`` every client takes exactly one optimiser step from the
global weights, so its update depends only on its own gradient ``g`` there:

* SGD: ``-lr * g``;
* Adam (``torch.optim.Adam``'s first step): ``m = (1 - b1) g``, ``v = (1 - b2) g^2``,
  ``-lr / (1 - b1) * m / (sqrt(v) / sqrt(1 - b2) + eps)``;
* FedProx's proximal term has zero gradient at the global weights and drops out.
"""

from __future__ import annotations

import math

import torch


def first_step(grad: torch.Tensor, optimizer: str, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """The parameter change of ``torch.optim.SGD``/``Adam``'s first step from gradient ``grad``
    (computed in place: ``grad`` is overwritten and returned)."""
    if optimizer == "sgd":
        return grad.mul_(-lr)
    b1, b2 = betas
    denom = torch.mul(grad, grad).mul_(1 - b2).sqrt_().div_(math.sqrt(1 - b2)).add_(eps)  # sqrt(v_hat) + eps
    return grad.mul_(1 - b1).div_(denom).mul_(-lr / (1 - b1))  # -lr * m_hat / denom
