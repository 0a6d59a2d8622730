"""Next-item training at every position of a window (the original SASRec recipe).

RecBole's ``SASRec.forward`` returns only the last position's state. Here the same
layers run once over a window with the causal mask, and the next-item loss is taken
at every position whose target is non-zero. For a history no longer than the window
this gives, term by term, RecBole's prefix-mode losses (tested).

``local_loss`` chooses the loss:

* ``ce``: full softmax over all items (RecBole's SASRec ``CE``);
* ``sampled_ce``: sampled softmax against ``num_negatives`` negatives shared by the
  batch, drawn uniformly from the public catalogue, accidental hits removed. With
  a uniform proposal every negative has the same sampling probability, so the
  log-Q correction of sampled softmax (Bengio & Senecal) is one constant shift of
  every logit and cancels in the softmax: none is applied;
* ``bce``: one uniformly drawn negative per position (the original SASRec).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_lumos.model.item_text import item_table

LOCAL_LOSSES = ("ce", "sampled_ce", "bce")


def all_position_hidden(model: nn.Module, item_seq: torch.Tensor) -> torch.Tensor:
    """``[B, L, d]`` states of a SASRec-family model at every position of ``item_seq``."""
    positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0).expand_as(item_seq)
    hidden = model.item_embedding(item_seq) + model.position_embedding(positions)
    hidden = model.dropout(model.LayerNorm(hidden))
    mask = model.get_attention_mask(item_seq)
    return model.trm_encoder(hidden, mask, output_all_encoded_layers=True)[-1]


def candidate_weights(model: nn.Module) -> torch.Tensor:
    """Embeddings of the items a model may recommend (CL4SRec adds a mask row; a text-aware
    table adds each item's projected text)."""
    return item_table(model)[: model.n_items]


def sample_negatives(
    n_items: int, num_negatives: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """``num_negatives`` item ids drawn uniformly (with replacement) from the catalogue, never padding."""
    where = generator.device if generator is not None else device  # a generator draws on its own device
    return torch.randint(1, n_items, (num_negatives,), generator=generator, device=where).to(device)


def _plain(tensor: torch.Tensor) -> bool:
    """True outside ``torch.func`` transforms (``vmap``/``grad`` wrap their tensors)."""
    return torch._C._functorch.maybe_get_level(tensor) == -1


def next_item_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    item_weights: torch.Tensor,
    kind: str = "ce",
    negatives: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Loss of predicting ``targets`` (``[..., L]``, 0 = skip) from ``hidden`` (``[..., L, d]``).

    Outside ``torch.func`` transforms the positions without a target are dropped before
    the item scores are computed: a batch of users is padded to its longest window, and
    the full softmax over the catalogue dominates the step. Under ``torch.func.vmap``
    (cohorts of clients trained together) shapes cannot depend on data, so there the
    padding is masked instead; both give the same loss. ``negatives`` is a shared ``[K]``
    id tensor for ``sampled_ce`` and has ``targets``' shape for ``bce``.
    """
    if _plain(hidden) and _plain(targets):
        kept = (targets > 0).reshape(-1).nonzero().squeeze(1)
        if kind == "bce" and negatives is not None and negatives.shape == targets.shape:
            negatives = negatives.reshape(-1)[kept]
        hidden, targets = hidden.reshape(-1, hidden.size(-1))[kept], targets.reshape(-1)[kept]
    keep = (targets > 0).to(hidden.dtype)
    if kind == "ce":
        logits = hidden @ item_weights.T
        losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        losses = losses.reshape(targets.shape)
    elif kind == "sampled_ce":
        if negatives is None or negatives.dim() != 1:
            raise ValueError("sampled_ce needs a shared 1-d tensor of negative item ids")
        pos = (hidden * item_weights[targets]).sum(-1, keepdim=True)
        neg = hidden @ item_weights[negatives].T
        neg = neg.masked_fill(negatives == targets.unsqueeze(-1), float("-inf"))
        logits = torch.cat([pos, neg], dim=-1)
        losses = -F.log_softmax(logits, dim=-1)[..., 0]
    elif kind == "bce":
        if negatives is None or negatives.shape != targets.shape:
            raise ValueError("bce needs one negative item per position (same shape as targets)")
        pos = (hidden * item_weights[targets]).sum(-1)
        neg = (hidden * item_weights[negatives]).sum(-1)
        losses = F.softplus(-pos) + F.softplus(neg)
    else:
        raise ValueError(f"local_loss must be one of {LOCAL_LOSSES}, got {kind!r}")
    total = (losses * keep).sum()
    if reduction == "sum":
        return total
    return total / keep.sum().clamp(min=1)


class AllPositionsObjective(nn.Module):
    """A model's all-position training loss, as a module so ``torch.func`` can swap its weights.

    Models that add terms (CL4SRec, LUMOS) implement
    ``all_positions_loss(inputs, targets, negatives, kind)``; any other SASRec-family
    model (RecBole's SASRec) gets the plain next-item loss, and so does every model when
    ``plain`` is set (a federated client whose extra term is exactly zero).
    """

    def __init__(self, model: nn.Module, kind: str = "ce", plain: bool = False) -> None:
        super().__init__()
        if kind not in LOCAL_LOSSES:
            raise ValueError(f"local_loss must be one of {LOCAL_LOSSES}, got {kind!r}")
        self.model = model
        self.kind = kind
        self.plain = plain

    def forward(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor | None = None,
        views: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.plain:
            return next_item_term(self.model, inputs, targets, negatives, self.kind)
        return all_positions_loss(self.model, inputs, targets, negatives, self.kind, views)


def next_item_term(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor | None = None,
    kind: str = "ce",
) -> torch.Tensor:
    """The plain next-item loss at every position: SASRec's whole loss, CL4SRec's and LUMOS's first term."""
    hidden = all_position_hidden(model, inputs)
    return next_item_loss(
        hidden, targets, candidate_weights(model), kind, negatives
    )


def all_positions_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor | None = None,
    kind: str = "ce",
    views: torch.Tensor | None = None,
) -> torch.Tensor:
    """The model's own all-position loss if it defines one, else the plain next-item loss.

    ``views`` (LUMOS) are the batch's users' generated view blocks; only models that
    need them receive them.
    """
    if views is not None:
        return model.all_positions_loss(inputs, targets, negatives, kind, views=views)
    if hasattr(model, "all_positions_loss"):
        return model.all_positions_loss(inputs, targets, negatives, kind)
    return next_item_term(model, inputs, targets, negatives, kind)
