"""LUMOS (arXiv 2602.09306): a SASRec backbone trained with a tri-view contrastive loss.

Each user's three views (F: future continuation, R: same-intent rephrasing, C:
counterfactual) are written on the client by its language model
(:mod:`recbole_lumos.generation`) from the user's training history only. They reach
the loss as one ``[4, L]`` block per user, joined by user in the client partition:
row 0 is the anchor (the last ``L`` training items), rows 1-3 are F, R and C, right
padded like RecBole sequences. Prediction is SASRec's, unchanged.
"""

from __future__ import annotations

import math

import torch
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.model.losses import large_negative, similarity
from recbole_lumos.model.next_item import next_item_term

VIEW_ROWS = {"F": 1, "R": 2, "C": 3}
"""Row of each view in a user's ``[4, L]`` block (row 0 is the anchor sequence)."""


def tri_view_loss(
    h: torch.Tensor,
    positives: list[torch.Tensor],
    counterfactual: torch.Tensor | None,
    tau: float,
    sim: str = "cos",
    w_c: float = 1.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Mean over positives of ``nce(h, h_P)`` (DESIGN.md §2.3)::

        nce(a, p) = -log( e^{s(a,p)/τ} / ( e^{s(a,p)/τ} + Σ_{b≠a} e^{s(a,h_b)/τ}
                                           + w_c Σ_c e^{s(a,h_C[c])/τ} ) )

    ``h`` are the anchors ``[U, d]``, each positive and ``counterfactual`` are ``[U, d]``
    (``None`` drops the counterfactual terms, the "without C" ablation). In-batch
    negatives are the other users' anchors; every user's counterfactual in the batch
    is a hard negative, weighted by ``w_c``. ``valid`` (``[U]`` bool) drops users with
    no views. Masks, not indexing, so it runs under ``torch.func.vmap``.
    """
    users = h.size(0)
    valid = torch.ones(users, dtype=torch.bool, device=h.device) if valid is None else valid
    others = ~torch.eye(users, dtype=torch.bool, device=h.device) & valid.unsqueeze(0)
    in_batch = similarity(h, h, sim).div(tau)
    in_batch = in_batch.masked_fill(~others, large_negative(in_batch.dtype))
    parts = [in_batch]
    if counterfactual is not None and w_c > 0:
        hard = similarity(h, counterfactual, sim).div(tau) + math.log(w_c)
        parts.append(hard.masked_fill(~valid.unsqueeze(0), large_negative(hard.dtype)))
    weights = valid.to(h.dtype)
    total = h.new_zeros(())
    for p in positives:
        positive = (similarity(h, p, sim).diagonal() / tau).unsqueeze(1)
        logits = torch.cat([positive, *parts], dim=1)
        losses = torch.logsumexp(logits, dim=1) - positive.squeeze(1)
        total = total + (losses * weights).sum() / weights.sum().clamp(min=1)
    return total / len(positives)


class LUMOS(SASRec):
    r"""SASRec with ``L = L_rec + lambda_cl * L_tri`` over generated views.

    ``L_rec`` is the next-item loss at every position (all-position training);
    ``L_tri`` is :func:`tri_view_loss` with F and R as positives and C as hard
    negative, restricted to ``lumos_views``. Keys: ``lambda_cl``, ``tau``, ``sim``,
    ``w_c``, ``lumos_views`` (plus the generator's ``k_f``, ``rho_r``, ``rho_c``).
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.lambda_cl = float(config["lambda_cl"])
        self.tau = float(config["tau"])
        self.sim = str(config["sim"])
        self.w_c = float(config["w_c"])
        views = config["lumos_views"]
        views = [views] if isinstance(views, str) else list(views or [])
        unknown = sorted(set(views) - set(VIEW_ROWS))
        if unknown:
            raise ConfigurationError(f"lumos_views may contain F, R and C only, got {unknown}.")
        if self.lambda_cl > 0 and not {"F", "R"} & set(views):
            raise ConfigurationError(
                f"lumos_views={views} has no positive view: the tri-view loss needs F or R. "
                "Add one, or set lambda_cl=0 to train the backbone alone."
            )
        self.lumos_views = tuple(v for v in VIEW_ROWS if v in views)
        if self.loss_type != "CE":
            raise NotImplementedError("LUMOS supports loss_type 'CE' only (DESIGN.md §2.3).")

    @property
    def needs_views(self) -> bool:
        """Whether training needs generated views (not when the contrastive term is off)."""
        return self.lambda_cl > 0

    @property
    def plain_next_item_loss(self) -> bool:
        """With ``lambda_cl = 0`` LUMOS is SASRec: the packed cohort path may train it."""
        return not self.needs_views

    def encode_views(self, views: torch.Tensor) -> torch.Tensor:
        """``[U, 4, L]`` id blocks -> ``[U, 4, d]`` sequence representations (dropout as in training)."""
        users, rows, length = views.shape
        flat = views.reshape(users * rows, length)
        lengths = (flat > 0).sum(1).clamp(min=1)
        return self.forward(flat, lengths).reshape(users, rows, -1)

    def contrastive_loss(self, views: torch.Tensor) -> torch.Tensor:
        """``L_tri`` for a batch of users' view blocks."""
        return self._tri_view(self.encode_views(views), (views[:, 0] > 0).any(1))

    def _tri_view(self, z: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``L_tri`` from encoded blocks ``z`` (``[U, 4, d]``); ``valid`` marks users with a history."""
        positives = [z[:, VIEW_ROWS[v]] for v in ("F", "R") if v in self.lumos_views]
        counterfactual = z[:, VIEW_ROWS["C"]] if "C" in self.lumos_views else None
        return tri_view_loss(z[:, 0], positives, counterfactual, self.tau, self.sim, self.w_c, valid)

    @property
    def lone_client_term_vanishes(self) -> bool:
        """Whether a federated client's tri-view term is exactly zero (gradient included).

        A client's batch is the client alone, so without the C view its term has no
        negative. The engine then trains it on the next-item loss and reads no view item
        (so it uploads no view row): the same update, by construction.
        """
        return self.needs_views and "C" not in self.lumos_views

    def client_blocks(
        self, inputs: torch.Tensor, owner: torch.Tensor, num_clients: int, views: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The packed cohort path's per-client sequences: each client's ``[4, L]`` view block
        (``None`` when :attr:`lone_client_term_vanishes`)."""
        if self.lone_client_term_vanishes:
            return None
        if views is None:
            raise ConfigurationError("LUMOS with lambda_cl > 0 needs each client's views; none reached the cohort.")
        return views, torch.arange(num_clients, device=views.device)

    def client_block_losses(self, z: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """``lambda_cl * L_tri`` of each client alone (``[C]``), from its encoded block ``z[c]``.

        A federated client's batch is its own block, so its only negative is its own
        counterfactual. This is what the packed cohort path
        (:func:`recbole_lumos.federated.packed.cohort_gradients`) adds to each client's loss.
        """
        valid = (views[:, 0] > 0).any(1)
        alone = torch.vmap(lambda zc, vc: self._tri_view(zc.unsqueeze(0), vc.unsqueeze(0)))
        return self.lambda_cl * alone(z, valid)

    def all_positions_loss(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor | None = None,
        kind: str = "ce",
        views: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-item loss at every position plus ``lambda_cl * L_tri`` over ``views``."""
        rec = next_item_term(self, inputs, targets, negatives, kind)
        if not self.needs_views:
            return rec
        if views is None:
            raise ConfigurationError("LUMOS with lambda_cl > 0 needs each user's views; none reached the batch.")
        return rec + self.lambda_cl * self.contrastive_loss(views)

    def calculate_loss(self, interaction: Interaction) -> torch.Tensor:
        if self.needs_views:
            raise ConfigurationError(
                "LUMOS trains in all_positions mode (its views are joined by user, not by prefix); "
                "drop --train_mode=prefix, or pass --federated=False for central training."
            )
        return super().calculate_loss(interaction)
