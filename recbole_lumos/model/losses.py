"""Contrastive losses shared by CL4SRec and LUMOS."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity(a: torch.Tensor, b: torch.Tensor, sim: str) -> torch.Tensor:
    """Pairwise similarity matrix ``[len(a), len(b)]``; ``sim`` is ``dot`` or ``cos``."""
    if sim == "cos":
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    elif sim != "dot":
        raise ValueError(f"sim must be 'dot' or 'cos', got {sim!r}")
    return a @ b.T


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float, sim: str = "dot") -> torch.Tensor:
    """NT-Xent (InfoNCE) over ``2N`` views with in-batch negatives, as in CL4SRec / SimCLR.

    ``z1[i]`` and ``z2[i]`` are two views of sequence ``i``. Each of the ``2N`` views
    has one positive (its partner) and ``2(N-1)`` negatives (every view of every other
    sequence); the loss is the mean cross-entropy over the ``2N`` anchors.
    """
    n = z1.size(0)
    z = torch.cat([z1, z2], dim=0)
    logits = similarity(z, z, sim) / tau
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)
