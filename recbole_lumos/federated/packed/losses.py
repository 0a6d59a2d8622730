"""The next-item loss at every kept position, in the form the per-client sums need.

The same per-position losses as :func:`recbole_lumos.model.next_item.next_item_loss`
(``ce``, ``sampled_ce``, ``bce``), returned with the leaves whose gradients the packed
path splits per client: item-table rows gathered per position, and the logits of
candidates the cohort shares.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def full_softmax_gradient(
    hidden: torch.Tensor, targets: torch.Tensor, item_weights: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``d(sum_p weights_p * ce_p) / d logits`` for the full softmax: ``softmax - one_hot``, scaled.

    Written into the logits buffer in place, without autograd: the ``[positions, items]``
    matrix is then made once and read three times, where ``F.cross_entropy`` under autograd
    keeps the logits and their log-softmax and makes a third matrix for the gradient (the
    elementwise passes over it are most of a full-softmax step's time: 0.14 s against 0.28 s
    for 6,400 positions and 3,417 items, the logits' and the states' gradients, one thread).
    """
    with torch.no_grad():
        grad = hidden @ item_weights.T
        grad.sub_(grad.amax(dim=1, keepdim=True)).exp_()  # one exp: logsumexp would take another
        grad.mul_((weights / grad.sum(dim=1)).unsqueeze(1))
        grad[torch.arange(targets.numel(), device=targets.device), targets] -= weights
        return grad


def position_losses(hidden, targets, item_weights, kind, negatives):
    """``next_item_loss``'s per-position losses at the kept positions.

    Returns the losses, the per-position leaves ``[(ids, rows)]`` gathered from the item
    table, and the logits of shared candidates (all items for ``ce``, the shared
    negatives for ``sampled_ce``) whose gradients are summed per client against ``hidden``.
    """
    if kind == "ce":
        logits = hidden @ item_weights.T
        return F.cross_entropy(logits, targets, reduction="none"), [], logits
    target_rows = item_weights[targets].requires_grad_()
    pos = (hidden * target_rows).sum(-1)
    if kind == "sampled_ce":
        # -log_softmax([pos, neg])[0] (uniform negatives: no log-Q shift, see next_item_loss); accidental
        # hits removed.
        neg = hidden @ item_weights[negatives].T
        hit = torch.isin(targets, negatives).nonzero().flatten()  # the few positions with accidental hits
        if hit.numel():
            row, column = (negatives == targets[hit].unsqueeze(-1)).nonzero(as_tuple=True)
            neg.index_put_((hit[row], column), neg.new_tensor(float("-inf")))
        losses = torch.logsumexp(torch.cat([pos.unsqueeze(-1), neg], -1), -1) - pos
        return losses, [(targets, target_rows)], neg
    negative_rows = item_weights[negatives].requires_grad_()
    neg = (hidden * negative_rows).sum(-1)
    losses = F.softplus(-pos) + F.softplus(neg)
    return losses, [(targets, target_rows), (negatives, negative_rows)], None
