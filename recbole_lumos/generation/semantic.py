"""Views built in the item-embedding space (``lumos_generation: semantic``, docs/design.md §2.1-2.2).

For a user with training history ``s`` (never its validation or test items) and
``recent = s[-L:]`` (``L = MAX_ITEM_LIST_LENGTH``, ``m = len(recent)``):

* **F** (future-oriented): ``s[-(L - k_f):]`` followed by the ``k_f`` items nearest
  to the intent vector (mean embedding of the last ``lumos_intent_window`` items)
  that are not in ``s``, nearest first. Length ``min(len(s), L - k_f) + k_f``.
* **R** (rephrasing): ``recent`` with ``r = max(1, round(rho_r * m))`` positions,
  drawn at random, each replaced by its item's nearest neighbour not in ``s`` (and
  not already used in the view); order kept. Length ``m``.
* **C** (counterfactual): ``recent`` with its last ``c = max(1, round(rho_c * m))``
  positions (most recent first) replaced by items sampled among the
  ``lumos_far_fraction`` of the pool least similar to the user's profile (mean
  embedding of the distinct items of ``s``), none in ``s``. Length ``m``.
* **C2 ... C{n_c}** (``lumos_num_counterfactuals`` > 1): further counterfactuals,
  the same positions filled by further draws from the same far pool. Each draw
  prefers far items no earlier counterfactual of the user used (the pool is gone
  through before an item comes back) and a draw equal to an earlier one is drawn
  again, so the ``n_c`` views differ wherever the pool allows. They come from a
  second random stream of ``(seed, user token)``, so F, R and C are the same
  whatever ``n_c`` is (a views file of ``n_c = 1`` keeps its content), and the
  counterfactuals of a smaller ``n_c`` are the first ones of a larger.

Only the user's own history and the catalogue's texts are used: no popularity or
co-occurrence statistics of other users. Random draws depend on ``(seed, user
token)`` only, so a user's views do not change with the batch, the number of users
or an interrupted run. Users are processed in batches with matrix products over the
item-embedding matrix; the prompt mode reuses the same plan (positions, fallbacks,
candidates).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from recbole_lumos.generation.settings import GeneratorSettings, counterfactual_names

_PRECOMPUTE_LIMIT = 8192  # item-item similarities are precomputed (N^2 floats) up to this many items
_REDRAWS = 32  # tries to make a further counterfactual (or its candidate list) differ from the earlier ones


class ItemSpace:
    """Unit item embeddings indexed by internal item id (row 0 is padding) and the pool views draw from."""

    def __init__(self, embeddings: np.ndarray | torch.Tensor, pool: np.ndarray | torch.Tensor) -> None:
        matrix = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        self.embeddings = torch.cat([torch.zeros(1, matrix.shape[1]), matrix])  # internal id i -> row i
        self.pool = torch.as_tensor(np.asarray(pool, dtype=bool)).clone()
        self.pool[0] = False
        self.num_ids = self.embeddings.shape[0]
        self._similarity = None
        if self.num_ids <= _PRECOMPUTE_LIMIT:
            self._similarity = self.embeddings @ self.embeddings.T

    def similarity_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of items ``ids`` (any shape) to every item: ``[*ids.shape, num_ids]``."""
        if self._similarity is not None:
            return self._similarity[ids]
        return self.embeddings[ids] @ self.embeddings.T

    def scores(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors @ self.embeddings.T


def user_rng(seed: int, user: str) -> np.random.Generator:
    """The random stream of one user: depends on ``(seed, user token)`` only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(str(user).encode("utf-8"))])


def counterfactual_rng(seed: int, user: str) -> np.random.Generator:
    """The user's stream of the further counterfactuals (C2, ...): apart from :func:`user_rng`, so that
    drawing them changes none of the draws of F, R and C."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(str(user).encode("utf-8")), 1])


def share(rho: float, m: int) -> int:
    """Positions a share ``rho`` of ``m`` stands for: at least 1 when ``rho > 0``, at most ``m``."""
    if rho <= 0 or m == 0:
        return 0
    return min(m, max(1, round(rho * m)))


@dataclass
class ViewPlan:
    """One user's view layout, semantic fillers and (prompt mode) candidate lists; internal item ids."""

    user: str
    history: np.ndarray
    recent: np.ndarray
    f_keep: np.ndarray
    r_positions: list[int]
    c_positions: list[int]
    """Most recent first."""
    f_items: list[int]
    r_items: list[int]
    """Semantic substitute for each of ``r_positions`` (the original item when none is left)."""
    c_items: list[int]
    """Far item for each of ``c_positions``."""
    candidates: dict[str, list[int]] = field(default_factory=dict)
    """View name (F, R, C, C2, ...) -> the prompt's candidates."""
    seen: set[int] = field(default_factory=set)
    c_extra: list[list[int]] = field(default_factory=list)
    """Far items of C2, C3, ...: one list per further counterfactual, each for ``c_positions``."""

    @property
    def counterfactuals(self) -> list[str]:
        """The names of this plan's counterfactual views: C, C2, ..."""
        return list(counterfactual_names(1 + len(self.c_extra)))

    def semantic_items(self, view: str) -> list[int]:
        """The semantic construction's new items of ``view`` (the prompt mode's fallback)."""
        if view == "F":
            return self.f_items
        if view == "R":
            return self.r_items
        return [self.c_items, *self.c_extra][self.counterfactuals.index(view)]

    def assemble(
        self,
        f_new: Sequence[int],
        r_new: Sequence[int],
        c_new: Sequence[int],
        c_extra: Sequence[Sequence[int]] = (),
    ) -> dict[str, list[int]]:
        """The views from chosen items (C2, ... from ``c_extra``); the layout rules of the module docstring."""
        views = {"F": [int(i) for i in self.f_keep] + [int(i) for i in f_new]}
        r_view = [int(i) for i in self.recent]
        for position, item in zip(self.r_positions, r_new, strict=False):
            r_view[position] = int(item)
        views["R"] = r_view
        for name, chosen in zip(counterfactual_names(1 + len(c_extra)), [c_new, *c_extra], strict=True):
            c_view = [int(i) for i in self.recent]
            for position, item in zip(self.c_positions, chosen, strict=False):
                c_view[position] = int(item)
            views[name] = c_view
        return views

    def semantic_views(self) -> dict[str, list[int]]:
        return self.assemble(self.f_items, self.r_items, self.c_items, self.c_extra)


def plan_views(
    space: ItemSpace,
    users: Sequence[str],
    histories: Sequence[np.ndarray],
    settings: GeneratorSettings,
    *,
    num_candidates: int = 0,
) -> list[ViewPlan]:
    """Plans for a batch of users (vectorised over the batch); candidates only when ``num_candidates > 0``."""
    L, k_f = int(settings.MAX_ITEM_LIST_LENGTH), int(settings.k_f)
    window = int(settings.lumos_intent_window)
    batch = len(users)
    recents = [np.asarray(h[-L:], dtype=np.int64) for h in histories]
    rngs = [user_rng(settings.views_seed, user) for user in users]
    m = [len(r) for r in recents]
    r_counts = [share(float(settings.rho_r), mi) for mi in m]
    c_counts = [share(float(settings.rho_c), mi) for mi in m]
    r_positions = [
        sorted(rng.choice(mi, size=r, replace=False).tolist()) for rng, mi, r in zip(rngs, m, r_counts, strict=True)
    ]
    c_positions = [list(range(mi - 1, mi - 1 - c, -1)) for mi, c in zip(m, c_counts, strict=True)]

    # Items a view may not use: the user's whole training history, padding and items outside the pool.
    seen = torch.zeros(batch, space.num_ids, dtype=torch.bool)
    rows_of = np.repeat(np.arange(batch), [len(h) for h in histories])
    flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if batch else np.zeros(0, np.int64)
    seen[torch.as_tensor(rows_of), torch.as_tensor(flat)] = True
    blocked = seen | ~space.pool

    # F: nearest unseen items to the recent-intent vector.
    intent_ids = _padded([r[-window:] for r in recents])
    intent = space.embeddings[intent_ids].sum(1) / (intent_ids > 0).sum(1, keepdim=True).clamp(min=1)
    f_scores = space.scores(intent).masked_fill(blocked, -math.inf)
    f_depth = min(space.num_ids, max(k_f, num_candidates))
    f_values, f_top = f_scores.topk(f_depth, dim=1) if f_depth else (None, None)

    # R: nearest neighbour of each replaced item, not seen and not already used in this view.
    max_r = max(r_counts, default=0)
    r_items = [[int(r[p]) for p in pos] for r, pos in zip(recents, r_positions, strict=True)]
    used = blocked.clone()
    r_neighbours: list[list[list[int]]] = [[] for _ in range(batch)]
    for j in range(max_r):
        rows = [b for b in range(batch) if len(r_positions[b]) > j]
        originals = torch.as_tensor([int(recents[b][r_positions[b][j]]) for b in rows])
        sims = space.similarity_rows(originals)
        best_value, best = sims.masked_fill(used[rows], -math.inf).max(dim=1)
        found = torch.isfinite(best_value)
        used[torch.as_tensor(rows)[found], best[found]] = True
        for b, item, ok in zip(rows, best.tolist(), found.tolist(), strict=True):
            if ok:
                r_items[b][j] = item
        if num_candidates:
            values, top = sims.masked_fill(blocked[rows], -math.inf).topk(min(space.num_ids, num_candidates), dim=1)
            for b, ranked in zip(rows, _finite_rows(top, values), strict=True):
                r_neighbours[b].append(ranked)

    # C: items sampled from the far end of the user's profile.
    counts = seen.sum(1, keepdim=True).clamp(min=1).float()
    profile = (seen.float() @ space.embeddings) / counts
    far_scores = space.scores(profile).masked_fill(blocked, math.inf)
    pool_size = int(space.pool.sum())
    far_depth = min(
        space.num_ids, max(max(c_counts, default=0), math.ceil(settings.lumos_far_fraction * pool_size), num_candidates)
    )
    far_values, far_top = (-far_scores).topk(far_depth, dim=1) if far_depth else (None, None)
    q = max(1, math.ceil(settings.lumos_far_fraction * pool_size))
    further = int(settings.lumos_num_counterfactuals) - 1

    f_lists = _finite_rows(f_top, f_values) if f_depth else [[] for _ in users]
    far_lists = _finite_rows(far_top, far_values) if far_depth else [[] for _ in users]
    plans: list[ViewPlan] = []
    for b, user in enumerate(users):
        rng = rngs[b]
        f_ranked, far_ranked = f_lists[b], far_lists[b]
        pool_b = far_ranked[: max(q, c_counts[b])]
        picks = rng.choice(len(pool_b), size=min(c_counts[b], len(pool_b)), replace=False) if pool_b else []
        c_new = [pool_b[i] for i in picks]
        c_new += [int(recents[b][p]) for p in c_positions[b][len(c_new) :]]  # nothing far left: keep the item
        c_extra: list[list[int]] = []
        extra_rng = counterfactual_rng(settings.views_seed, user) if further else None
        if further:
            for draw in _spread_draws(extra_rng, pool_b, c_counts[b], [pool_b[i] for i in picks], further):
                c_extra.append(draw + [int(recents[b][p]) for p in c_positions[b][len(draw) :]])
        plan = ViewPlan(
            user=user,
            history=np.asarray(histories[b]),
            recent=recents[b],
            f_keep=np.asarray(histories[b][-(L - k_f) :], dtype=np.int64),  # k_f < L: never the whole history
            r_positions=r_positions[b],
            c_positions=c_positions[b],
            f_items=f_ranked[:k_f],
            r_items=r_items[b],
            c_items=c_new,
            seen=set(np.asarray(histories[b]).tolist()),
            c_extra=c_extra,
        )
        if num_candidates:
            far_candidates = far_ranked[: max(num_candidates, q)]
            plan.candidates = {
                "F": _shuffled(rng, f_ranked[:num_candidates]),
                "R": _shuffled(rng, _round_robin(r_neighbours[b], num_candidates)),
                "C": _shuffled(rng, _sample(rng, far_candidates, num_candidates)),
            }
            if further:  # each further counterfactual's prompt gets its own list: other far items, other order
                lists = _spread_draws(extra_rng, far_candidates, num_candidates, plan.candidates["C"], further)
                plan.candidates.update(zip(plan.counterfactuals[1:], lists, strict=True))
        plans.append(plan)
    return plans


def semantic_views(
    space: ItemSpace, users: Sequence[str], histories: Sequence[np.ndarray], settings: GeneratorSettings
) -> list[dict[str, list[int]]]:
    """F, R, C (and C2, ...) of every user of the batch (internal item ids)."""
    return [plan.semantic_views() for plan in plan_views(space, users, histories, settings)]


def _padded(rows: Sequence[np.ndarray]) -> torch.Tensor:
    width = max((len(r) for r in rows), default=1) or 1
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(np.asarray(r, dtype=np.int64))
    return out


def _finite_rows(ids: torch.Tensor, values: torch.Tensor) -> list[list[int]]:
    """Each row of a top-k result without its masked (infinite) entries, as Python ints."""
    ids, keep = ids.numpy(), np.isfinite(values.numpy())
    return [row[mask].tolist() for row, mask in zip(ids, keep, strict=True)]


def _round_robin(lists: Sequence[Sequence[int]], limit: int) -> list[int]:
    """The first neighbour of every list, then the second, ...: every replaced item gets candidates."""
    out: list[int] = []
    seen: set[int] = set()
    for depth in range(max((len(x) for x in lists), default=0)):
        for neighbours in lists:
            if depth < len(neighbours) and neighbours[depth] not in seen:
                seen.add(neighbours[depth])
                out.append(neighbours[depth])
                if len(out) == limit:
                    return out
    return out


def _spread_draws(
    rng: np.random.Generator, pool: Sequence[int], size: int, first: Sequence[int], count: int
) -> list[list[int]]:
    """``count`` draws of ``min(size, len(pool))`` distinct items of ``pool`` (random order) after ``first``.

    A draw takes items that no earlier draw (``first`` included) used while enough are
    left, then the rest of the pool comes back; a draw equal to an earlier one is
    drawn again, up to ``_REDRAWS`` times. So draws differ wherever the pool has room,
    and repeat only when it has not (say, one far item for ``n_c = 4``).
    """
    size = min(int(size), len(pool))
    earlier = {tuple(int(i) for i in first)}
    used = {int(i) for i in first}
    draws: list[list[int]] = []
    for _ in range(count):
        fresh = [int(i) for i in pool if int(i) not in used]
        new_round = len(fresh) < size
        if not new_round:
            draw = [fresh[i] for i in rng.choice(len(fresh), size=size, replace=False)]
        else:  # the pool is used up: all that is fresh, the rest from the whole pool, and a new round
            rest = [int(i) for i in pool if int(i) in used]
            draw = fresh + [rest[i] for i in rng.choice(len(rest), size=size - len(fresh), replace=False)]
            draw = [draw[i] for i in rng.permutation(len(draw))]
        for _ in range(_REDRAWS):
            if tuple(draw) not in earlier:
                break
            draw = [int(pool[i]) for i in rng.choice(len(pool), size=size, replace=False)]
        used = set(draw) if new_round else used | set(draw)
        earlier.add(tuple(draw))
        draws.append(draw)
    return draws


def _sample(rng: np.random.Generator, items: Sequence[int], size: int) -> list[int]:
    if len(items) <= size:
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), size=size, replace=False))]


def _shuffled(rng: np.random.Generator, items: Sequence[int]) -> list[int]:
    """Candidates in random order, so that picking "1, 2, 3" is not the semantic answer by construction."""
    order = rng.permutation(len(items))
    return [int(items[i]) for i in order]
