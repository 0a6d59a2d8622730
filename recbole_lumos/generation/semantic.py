"""Views built in the item-embedding space (``lumos_generation: semantic``, DESIGN.md §2.1-2.2).

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

from recbole_lumos.generation.settings import GeneratorSettings

_PRECOMPUTE_LIMIT = 8192  # item-item similarities are precomputed (N^2 floats) up to this many items


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
    seen: set[int] = field(default_factory=set)

    def assemble(self, f_new: Sequence[int], r_new: Sequence[int], c_new: Sequence[int]) -> dict[str, list[int]]:
        """The three views from chosen items; the layout rules of the module docstring."""
        views = {"F": [int(i) for i in self.f_keep] + [int(i) for i in f_new]}
        r_view = [int(i) for i in self.recent]
        for position, item in zip(self.r_positions, r_new, strict=False):
            r_view[position] = int(item)
        c_view = [int(i) for i in self.recent]
        for position, item in zip(self.c_positions, c_new, strict=False):
            c_view[position] = int(item)
        views["R"], views["C"] = r_view, c_view
        return views

    def semantic_views(self) -> dict[str, list[int]]:
        return self.assemble(self.f_items, self.r_items, self.c_items)


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
        )
        if num_candidates:
            plan.candidates = {
                "F": _shuffled(rng, f_ranked[:num_candidates]),
                "R": _shuffled(rng, _round_robin(r_neighbours[b], num_candidates)),
                "C": _shuffled(rng, _sample(rng, far_ranked[: max(num_candidates, q)], num_candidates)),
            }
        plans.append(plan)
    return plans


def semantic_views(
    space: ItemSpace, users: Sequence[str], histories: Sequence[np.ndarray], settings: GeneratorSettings
) -> list[dict[str, list[int]]]:
    """F, R and C of every user of the batch (internal item ids)."""
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


def _sample(rng: np.random.Generator, items: Sequence[int], size: int) -> list[int]:
    if len(items) <= size:
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), size=size, replace=False))]


def _shuffled(rng: np.random.Generator, items: Sequence[int]) -> list[int]:
    """Candidates in random order, so that picking "1, 2, 3" is not the semantic answer by construction."""
    order = rng.permutation(len(items))
    return [int(items[i]) for i in order]
