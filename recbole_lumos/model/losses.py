"""Contrastive losses shared by CL4SRec and LUMOS."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def large_negative(dtype: torch.dtype) -> float:
    """The most negative finite value of ``dtype``: a mask fill that never overflows.

    ``-1e9`` is ``-inf`` in float16, and a row masked entirely to ``-inf`` gives NaN
    in softmax; ``finfo.min`` stays finite in every float dtype, and ``exp`` of it
    minus any row maximum is 0 exactly as ``-1e9``'s is in float32.
    """
    return torch.finfo(dtype).min


def similarity(a: torch.Tensor, b: torch.Tensor, sim: str) -> torch.Tensor:
    """Pairwise similarity matrix ``[len(a), len(b)]``; ``sim`` is ``dot`` or ``cos``."""
    if sim == "cos":
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    elif sim != "dot":
        raise ValueError(f"sim must be 'dot' or 'cos', got {sim!r}")
    return a @ b.T


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, tau: float, sim: str = "dot", valid: torch.Tensor | None = None
) -> torch.Tensor:
    """NT-Xent (InfoNCE) over ``2N`` views with in-batch negatives, as in CL4SRec / SimCLR.

    ``z1[i]`` and ``z2[i]`` are two views of sequence ``i``. Each of the ``2N`` views
    has one positive (its partner) and ``2(N-1)`` negatives (every view of every other
    sequence); the loss is the mean cross-entropy over the ``2N`` anchors.

    ``valid`` (``[N]`` bool) drops padded sequences as anchors and as negatives. It is
    a mask rather than an index so the loss runs under ``torch.func.vmap``, where a
    client's padded windows are all-zero rows.
    """
    n = z1.size(0)
    z = torch.cat([z1, z2], dim=0)
    logits = similarity(z, z, sim) / tau
    targets = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)])
    if valid is None:
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        return F.cross_entropy(logits, targets)
    keep = torch.cat([valid, valid]).to(z.device)
    # Finite fill: an all-padding anchor row must not turn into NaN (it is weighted 0 below).
    blocked = torch.eye(2 * n, dtype=torch.bool, device=z.device) | ~keep.unsqueeze(0)
    logits = logits.masked_fill(blocked, large_negative(logits.dtype))
    losses = F.cross_entropy(logits, targets, reduction="none")
    weights = keep.to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp(min=1)
