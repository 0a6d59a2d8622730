"""LUMOS (arXiv 2602.09306): a SASRec backbone trained with a tri-view contrastive loss.

Each user's views (F: future continuation, R: same-intent rephrasing, C:
``lumos_num_counterfactuals`` counterfactuals) are written on the client by its
language model (:mod:`recbole_lumos.generation`) from the user's training history
only. They reach the loss as one ``[3 + n_c, L]`` block per user, joined by user in
the client partition: row 0 is the anchor (the last ``L`` training items), rows 1-2
are F and R, rows 3.. the counterfactuals, right padded like RecBole sequences.
Prediction is SASRec's, unchanged.

A federated client's batch is the client alone, so its contrastive term can only
use negatives it holds itself (docs/design.md §2.3; ``results/tri-view-activity.md``): its
``n_c`` counterfactual sequences and, with ``lumos_item_negatives``, the items its
counterfactuals brought in, scored against the anchor in the item-embedding table
(they cost no encoder pass). ``lumos_aug_weight`` also trains the next-item loss on
the views themselves (LLM data augmentation for short histories).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_lumos.config_check import name_list
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.model.losses import large_negative, similarity
from recbole_lumos.model.next_item import all_position_hidden, candidate_weights, next_item_loss, next_item_term

VIEW_ROWS = {"F": 1, "R": 2, "C": 3}
"""Row of each view in a user's block (row 0 is the anchor sequence); C is the first of
the ``n_c`` counterfactual rows ``3 .. 3 + n_c - 1``."""
FIRST_COUNTERFACTUAL = VIEW_ROWS["C"]


def tri_view_loss(
    h: torch.Tensor,
    positives: list[torch.Tensor],
    counterfactual: torch.Tensor | None,
    tau: float,
    sim: str = "cos",
    w_c: float = 1.0,
    valid: torch.Tensor | None = None,
    item_negatives: torch.Tensor | None = None,
    item_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Mean over positives of ``nce(h, h_P)`` (docs/design.md §2.3)::

        nce(a, p) = -log( e^{s(a,p)/τ} / ( e^{s(a,p)/τ} + Σ_{b≠a} e^{s(a,h_b)/τ}
                                           + w_c Σ_c e^{s(a,h_C[c])/τ} + w_c Σ_j e^{s(a,e_j)/τ} ) )

    ``h`` are the anchors ``[U, d]``, each positive ``[U, d]``, ``counterfactual``
    ``[U, d]`` or ``[U, n_c, d]`` (``None`` drops those terms, the "without C" ablation).
    In-batch negatives are the other users' anchors; every counterfactual in the batch
    is a hard negative, weighted by ``w_c``. ``item_negatives`` (``[U, k, d]``, masked
    by ``item_valid``) are each anchor's own item-level negatives, weighted by ``w_c``
    too. ``valid`` (``[U]`` bool) drops users with no views. Masks, not indexing, so
    shapes never depend on data.
    """
    users = h.size(0)
    valid = torch.ones(users, dtype=torch.bool, device=h.device) if valid is None else valid
    others = ~torch.eye(users, dtype=torch.bool, device=h.device) & valid.unsqueeze(0)
    in_batch = similarity(h, h, sim).div(tau)
    in_batch = in_batch.masked_fill(~others, large_negative(in_batch.dtype))
    parts = [in_batch]
    if counterfactual is not None and w_c > 0:
        hard_views = counterfactual if counterfactual.dim() == 3 else counterfactual.unsqueeze(1)
        count = hard_views.size(1)
        hard = similarity(h, hard_views.reshape(users * count, -1), sim).div(tau) + math.log(w_c)
        parts.append(hard.masked_fill(~valid.repeat_interleave(count).unsqueeze(0), large_negative(hard.dtype)))
    if item_negatives is not None and w_c > 0:
        a = torch.nn.functional.normalize(h, dim=-1) if sim == "cos" else h
        e = torch.nn.functional.normalize(item_negatives, dim=-1) if sim == "cos" else item_negatives
        items = torch.einsum("ud,ukd->uk", a, e).div(tau) + math.log(w_c)
        keep = valid.unsqueeze(1) if item_valid is None else item_valid & valid.unsqueeze(1)
        parts.append(items.masked_fill(~keep, large_negative(items.dtype)))
    weights = valid.to(h.dtype)
    total = h.new_zeros(())
    for p in positives:
        positive = (similarity(h, p, sim).diagonal() / tau).unsqueeze(1)
        logits = torch.cat([positive, *parts], dim=1)
        losses = torch.logsumexp(logits, dim=1) - positive.squeeze(1)
        total = total + (losses * weights).sum() / weights.sum().clamp(min=1)
    return total / len(positives)


def new_items(rows: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``rows`` (``[U, R, L]``) with every id that also occurs in the user's ``anchor``
    (``[U, L]``) set to 0: the items a view brought in (F's inferred items, C's far ones)."""
    seen = (rows.unsqueeze(-1) == anchor[:, None, None, :]).any(-1)
    return rows.masked_fill(seen, 0)


def first_distinct(ids: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` distinct non-zero ids of each row of ``ids`` (``[U, N]``), in
    order of first occurrence, zero padded to ``[U, count]``."""
    users, width = ids.shape
    if width == 0 or count == 0:
        return ids.new_zeros(users, count)
    order = torch.argsort(ids, dim=1, stable=True)
    ranked = ids.gather(1, order)
    first = torch.ones_like(ranked, dtype=torch.bool)
    first[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    keep = torch.zeros_like(first).scatter_(1, order, first) & (ids > 0)
    positions = torch.arange(width, device=ids.device).expand(users, -1)
    chosen = torch.argsort(torch.where(keep, positions, width + positions), dim=1)[:, : min(count, width)]
    picked = ids.gather(1, chosen) * keep.gather(1, chosen)  # kept ids first, in their order
    return torch.nn.functional.pad(picked, (0, count - picked.size(1)))


@dataclass(frozen=True)
class AugmentedWindows:
    """Next-item windows cut from users' views (``lumos_aug_weight``)."""

    inputs: torch.Tensor
    """``[A, L - 1]`` view items but the last."""
    targets: torch.Tensor
    """``[A, L - 1]`` the next view item (0: not a target)."""
    owner: torch.Tensor
    """``[A]`` the user (row of the view blocks) each window belongs to."""
    negatives: torch.Tensor | None
    """``bce``: one negative per position, taken from the owner's own negatives."""


class LUMOS(SASRec):
    r"""SASRec with ``L = L_rec + lambda_cl * L_tri + lumos_aug_weight * L_aug`` over generated views.

    ``L_rec`` is the next-item loss at every position (all-position training);
    ``L_tri`` is :func:`tri_view_loss` with F and R as positives and the counterfactuals
    (and, with ``lumos_item_negatives``, their new items) as hard negatives,
    restricted to ``lumos_views``; ``L_aug`` is the next-item loss on the
    ``lumos_aug_views`` views. Keys: ``lambda_cl``, ``tau``, ``sim``, ``w_c``,
    ``lumos_views``, ``lumos_num_counterfactuals``, ``lumos_item_negatives``,
    ``lumos_aug_weight``, ``lumos_aug_views``, ``lumos_aug_f_targets`` (plus the
    generator's ``k_f``, ``rho_r``, ``rho_c``).
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.lambda_cl = float(config["lambda_cl"])
        self.tau = float(config["tau"])
        self.sim = str(config["sim"])
        self.w_c = float(config["w_c"])
        self.lumos_views = _view_names(config["lumos_views"], "lumos_views", ("F", "R", "C"))
        if self.lambda_cl > 0 and not {"F", "R"} & set(self.lumos_views):
            raise ConfigurationError(
                f"lumos_views={list(self.lumos_views)} has no positive view: the tri-view loss needs F or R. "
                "Add one, or set lambda_cl=0 to train the backbone alone."
            )
        self.num_counterfactuals = _count(config["lumos_num_counterfactuals"], 1, "lumos_num_counterfactuals", 1)
        self.item_negatives = _count(config["lumos_item_negatives"], 0, "lumos_item_negatives", 0)
        self.aug_weight = float(config["lumos_aug_weight"] or 0.0)
        if self.aug_weight < 0:
            raise ConfigurationError(f"lumos_aug_weight must be >= 0 (0 = off), got {self.aug_weight}.")
        aug_views = config["lumos_aug_views"]
        self.aug_views = _view_names(["R"] if aug_views is None else aug_views, "lumos_aug_views", ("F", "R"))
        if self.aug_weight > 0 and not self.aug_views:
            raise ConfigurationError("lumos_aug_weight > 0 needs lumos_aug_views: F, R or both.")
        self.aug_f_targets = bool(config["lumos_aug_f_targets"])
        if self.loss_type != "CE":
            raise NotImplementedError("LUMOS supports loss_type 'CE' only (docs/design.md §2.3).")

    # ------------------------------------------------------------ what training needs
    @property
    def needs_views(self) -> bool:
        """Whether training needs generated views (not when both view terms are off)."""
        return self.lambda_cl > 0 or self.aug_weight > 0

    @property
    def plain_next_item_loss(self) -> bool:
        """With ``lambda_cl = 0`` and no augmentation LUMOS is SASRec: the packed path may train it."""
        return not self.needs_views

    @property
    def lone_contrastive_term_vanishes(self) -> bool:
        """Whether a lone client's tri-view term is exactly zero: it has a negative only
        through the C views (its counterfactuals and their items)."""
        return self.lambda_cl == 0 or "C" not in self.lumos_views

    @property
    def lone_client_term_vanishes(self) -> bool:
        """Whether a federated client's whole view term is exactly zero (gradient included).

        A client's batch is the client alone, so without the C view its tri-view term has
        no negative. Without augmentation the engine then trains it on the next-item loss
        and reads no view item (so it uploads no view row): the same update, by construction.
        """
        return self.needs_views and self.lone_contrastive_term_vanishes and self.aug_weight == 0

    # ------------------------------------------------------------------ the views
    def encode_views(self, views: torch.Tensor) -> torch.Tensor:
        """``[U, R, L]`` id blocks -> ``[U, R, d]`` sequence representations (dropout as in training)."""
        users, rows, length = views.shape
        flat = views.reshape(users * rows, length)
        lengths = (flat > 0).sum(1).clamp(min=1)
        return self.forward(flat, lengths).reshape(users, rows, -1)

    def counterfactual_items(self, views: torch.Tensor) -> torch.Tensor:
        """``[U, k]`` item-level negatives (``k = lumos_item_negatives``, 0 = padding): the first
        distinct items the user's counterfactuals brought in (none of its anchor's items)."""
        brought = new_items(views[:, FIRST_COUNTERFACTUAL:], views[:, 0])
        return first_distinct(brought.reshape(views.size(0), -1), self.item_negatives)

    def contrastive_loss(self, views: torch.Tensor) -> torch.Tensor:
        """``L_tri`` for a batch of users' view blocks."""
        items = self.block_items(views)
        if items is None:
            return self._tri_view(self.encode_views(views), views)
        return self._tri_view(self.encode_views(views), views, self.item_embedding(items), items > 0)

    def block_items(self, views: torch.Tensor) -> torch.Tensor | None:
        """The item rows the tri-view term scores directly (``None``: none)."""
        if self.item_negatives == 0 or self.lone_contrastive_term_vanishes:
            return None
        return self.counterfactual_items(views)

    def _tri_view(
        self,
        z: torch.Tensor,
        views: torch.Tensor,
        item_vectors: torch.Tensor | None = None,
        item_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``L_tri`` from encoded blocks ``z`` (``[U, R, d]``) of ``views`` and item negatives."""
        valid = (views[:, 0] > 0).any(1)
        positives = [z[:, VIEW_ROWS[v]] for v in ("F", "R") if v in self.lumos_views]
        counterfactual = z[:, FIRST_COUNTERFACTUAL:] if "C" in self.lumos_views else None
        return tri_view_loss(
            z[:, 0], positives, counterfactual, self.tau, self.sim, self.w_c, valid, item_vectors, item_valid
        )

    def augmented_windows(
        self, views: torch.Tensor, negatives: torch.Tensor | None = None, owner: torch.Tensor | None = None
    ) -> AugmentedWindows:
        """Next-item windows over each user's ``lumos_aug_views`` views.

        F's inferred items (those not in the anchor) are targets only with
        ``lumos_aug_f_targets``. ``negatives`` are the batch's ``bce`` negatives (one per
        position of its real windows, ``owner`` giving each window's user; ``None``: all
        one user's): each user's augmented positions reuse its own, in order, so a client
        trained alone and in a cohort sees the same ones.
        """
        users = views.size(0)
        rows = [VIEW_ROWS[v] for v in self.aug_views]
        sequences = views[:, rows]
        inputs, targets = sequences[..., :-1], sequences[..., 1:]
        if "F" in self.aug_views and not self.aug_f_targets:
            f = rows.index(VIEW_ROWS["F"])
            inferred = new_items(targets[:, f : f + 1], views[:, 0]) > 0
            targets = targets.clone()
            targets[:, f : f + 1] = targets[:, f : f + 1].masked_fill(inferred, 0)
        targets = targets.masked_fill(~(views[:, :1, 0] > 0).unsqueeze(-1), 0)  # users without views
        inputs, targets = inputs.reshape(-1, inputs.size(-1)), targets.reshape(-1, targets.size(-1))
        window_owner = torch.arange(users, device=views.device).repeat_interleave(len(rows))
        own = None
        if negatives is not None and negatives.dim() == 2:
            own = _own_negatives(negatives, owner, window_owner, targets.size(-1))
        return AugmentedWindows(inputs, targets, window_owner, own)

    # ------------------------------------------------------------ the client term
    def client_blocks(
        self, inputs: torch.Tensor, owner: torch.Tensor, num_clients: int, views: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The packed cohort path's per-client sequences: each client's view block
        (``None`` when its tri-view term vanishes)."""
        if self.lone_contrastive_term_vanishes:
            return None
        if views is None:
            raise ConfigurationError("LUMOS with lambda_cl > 0 needs each client's views; none reached the cohort.")
        return views, torch.arange(num_clients, device=views.device)

    def client_block_losses(
        self, z: torch.Tensor, views: torch.Tensor, item_vectors: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``lambda_cl * L_tri`` of each client alone (``[C]``), from its encoded block ``z[c]``
        (and ``item_vectors[c]``, the rows of :meth:`block_items`).

        A federated client's batch is its own block, so its only negatives are its own
        counterfactuals (and their items). This is what the packed cohort path
        (:func:`recbole_lumos.federated.packed.cohort_gradients`) adds to each client's loss.
        """
        if item_vectors is None:
            alone = torch.vmap(lambda zc, vc: self._tri_view(zc.unsqueeze(0), vc.unsqueeze(0)))
            return self.lambda_cl * alone(z, views)
        valid = self.counterfactual_items(views) > 0

        def one(zc, vc, ic, kc):
            return self._tri_view(zc.unsqueeze(0), vc.unsqueeze(0), ic.unsqueeze(0), kc.unsqueeze(0))

        return self.lambda_cl * torch.vmap(one)(z, views, item_vectors, valid)

    def all_positions_loss(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor | None = None,
        kind: str = "ce",
        views: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-item loss at every position plus ``lambda_cl * L_tri`` over ``views`` plus
        ``lumos_aug_weight`` times the next-item loss on the views."""
        rec = next_item_term(self, inputs, targets, negatives, kind)
        if not self.needs_views:
            return rec
        if views is None:
            raise ConfigurationError("LUMOS with views on needs each user's views; none reached the batch.")
        if self.lambda_cl > 0:
            rec = rec + self.lambda_cl * self.contrastive_loss(views)
        if self.aug_weight > 0:
            aug = self.augmented_windows(views, negatives)
            hidden = all_position_hidden(self, aug.inputs)
            aug_negatives = aug.negatives if kind == "bce" else negatives
            rec = rec + self.aug_weight * next_item_loss(
                hidden, aug.targets, candidate_weights(self), kind, aug_negatives
            )
        return rec

    def calculate_loss(self, interaction: Interaction) -> torch.Tensor:
        if self.needs_views:
            raise ConfigurationError(
                "LUMOS trains in all_positions mode (its views are joined by user, not by prefix); "
                "drop --train_mode=prefix, or pass --federated=False for central training."
            )
        if self.loss_type != "CE":
            return super().calculate_loss(interaction)
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.loss_fct(seq_output @ candidate_weights(self).T, interaction[self.POS_ITEM_ID])

    def full_sort_predict(self, interaction: Interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return seq_output @ candidate_weights(self).T


def _view_names(value, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    names = name_list(value)
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ConfigurationError(f"{key} may contain {', '.join(allowed)} only, got {unknown}.")
    return tuple(v for v in allowed if v in names)


def _count(value, default: int, key: str, minimum: int) -> int:
    count = default if value is None else int(value)
    if count < minimum:
        raise ConfigurationError(f"{key} must be at least {minimum}, got {count}.")
    return count


def _own_negatives(
    negatives: torch.Tensor, owner: torch.Tensor | None, window_owner: torch.Tensor, width: int
) -> torch.Tensor:
    """``[A, width]`` bce negatives for augmented windows: user ``u``'s ``i``-th augmented
    position takes its ``i``-th own negative (cycling), so the draw is per user."""
    owner = negatives.new_zeros(negatives.size(0)) if owner is None else owner
    flat_owner = owner.repeat_interleave(negatives.size(1))
    order = torch.argsort(flat_owner, stable=True)
    ordered = negatives.reshape(-1)[order]
    users = int(window_owner.max()) + 1 if window_owner.numel() else 0
    counts = torch.bincount(flat_owner, minlength=users)
    starts = torch.cumsum(counts, 0) - counts
    per_user = torch.bincount(window_owner, minlength=users)
    index_in_user = (
        torch.arange(window_owner.numel(), device=negatives.device)
        - (torch.cumsum(per_user, 0) - per_user)[window_owner]
    )
    offsets = index_in_user.unsqueeze(1) * width + torch.arange(width, device=negatives.device)
    user = window_owner.unsqueeze(1).expand(-1, width)
    picked = starts[user] + offsets % counts[user].clamp(min=1)
    return ordered[picked.clamp(max=max(ordered.numel() - 1, 0))]
