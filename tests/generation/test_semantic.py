"""Views in embedding space: layout rules, never seen items in F, far items in C, per-user seeding."""

from __future__ import annotations

import numpy as np

from recbole_lumos.generation.semantic import ItemSpace, plan_views, semantic_views, share
from recbole_lumos.generation.settings import GeneratorSettings

SETTINGS = GeneratorSettings(MAX_ITEM_LIST_LENGTH=8, k_f=2, rho_r=0.25, rho_c=0.25, seed=7, lumos_far_fraction=0.2)


def clustered_space(n_per_cluster: int = 10) -> ItemSpace:
    """Items 1..10 point one way, 11..20 the opposite way (with a little noise)."""
    rng = np.random.default_rng(0)
    direction = np.zeros(8, dtype=np.float32)
    direction[0] = 1
    first = direction + 0.1 * rng.standard_normal((n_per_cluster, 8))
    second = -direction + 0.1 * rng.standard_normal((n_per_cluster, 8))
    matrix = np.vstack([first, second]).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return ItemSpace(matrix, np.ones(2 * n_per_cluster + 1, dtype=bool))


def test_share_is_at_least_one_and_at_most_all():
    assert share(0.3, 10) == 3 and share(0.01, 10) == 1 and share(0.0, 10) == 0 and share(1.0, 3) == 3


def test_layout_of_the_three_views():
    space = clustered_space()
    history = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])[::-1].copy()  # 10 items of the first cluster
    plan = plan_views(space, ["u1"], [history], SETTINGS)[0]
    views = plan.semantic_views()
    recent = history[-8:].tolist()
    assert views["F"][:6] == history[-6:].tolist() and len(views["F"]) == 8
    assert not set(views["F"][6:]) & set(history.tolist())  # appended items are never in the history
    assert set(views["F"][6:]) <= set(range(11, 21))  # ... and nothing else is left
    assert len(views["R"]) == len(views["C"]) == 8
    changed = [i for i in range(8) if views["R"][i] != recent[i]]
    assert changed == plan.r_positions and len(changed) == share(0.25, 8)
    assert views["C"][:6] == recent[:6] and plan.c_positions == [7, 6]
    assert not set(views["C"][6:]) & set(history.tolist())


def test_f_takes_the_nearest_unseen_items_and_c_the_farthest():
    space = clustered_space()
    history = np.array([1, 2, 3, 4])
    views = semantic_views(space, ["u"], [history], SETTINGS)[0]
    assert set(views["F"][-2:]) <= set(range(5, 11))  # same cluster as the history
    assert set(views["R"]) <= set(range(1, 11))
    assert set(views["C"][-1:]) <= set(range(11, 21))  # the opposite cluster
    assert len(views["F"]) == 4 + 2 and len(views["R"]) == len(views["C"]) == 4


def test_replacements_in_r_are_distinct():
    space = clustered_space()
    history = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    settings = GeneratorSettings(MAX_ITEM_LIST_LENGTH=8, k_f=2, rho_r=0.5, rho_c=0.25, seed=3)
    views = semantic_views(space, ["u"], [history], settings)[0]
    assert len(set(views["R"])) == 8


def test_views_depend_on_seed_and_user_only_not_on_the_batch():
    space = clustered_space()
    rng = np.random.default_rng(1)
    histories = [rng.choice(np.arange(1, 21), size=rng.integers(3, 12), replace=False) for _ in range(6)]
    users = [f"u{i}" for i in range(6)]
    together = semantic_views(space, users, histories, SETTINGS)
    alone = [semantic_views(space, [u], [h], SETTINGS)[0] for u, h in zip(users, histories, strict=True)]
    assert together == alone
    reseeded = semantic_views(space, users, histories, GeneratorSettings(**{**SETTINGS.__dict__, "seed": 8}))
    assert reseeded != together


def test_items_outside_the_pool_are_never_used():
    space = clustered_space()
    space.pool[5:11] = False
    views = semantic_views(space, ["u"], [np.array([1, 2, 3, 4])], SETTINGS)[0]
    assert not {i for items in views.values() for i in items} & set(range(5, 11))


def test_candidates_are_unseen_and_of_the_requested_size():
    space = clustered_space()
    history = np.array([1, 2, 3, 4, 5, 6])
    plan = plan_views(space, ["u"], [history], SETTINGS, num_candidates=5)[0]
    for view in ("F", "R", "C"):
        assert len(plan.candidates[view]) == 5 and not set(plan.candidates[view]) & set(history.tolist())
    assert set(plan.candidates["C"]) <= set(range(11, 21))


def settings_with(**changes) -> GeneratorSettings:
    return GeneratorSettings(**{**SETTINGS.__dict__, **changes})


def test_further_counterfactuals_are_distinct_far_draws_at_the_same_positions():
    space = clustered_space()
    history = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    four = settings_with(lumos_num_counterfactuals=4, lumos_far_fraction=0.5)
    plan = plan_views(space, ["u"], [history], four)[0]
    views = plan.semantic_views()
    names = ["C", "C2", "C3", "C4"]
    assert list(views) == ["F", "R", *names] and plan.counterfactuals == names
    assert len({tuple(views[n]) for n in names}) == 4  # four different counterfactuals
    recent = history.tolist()
    for name in names:
        assert views[name][:6] == recent[:6]  # the same positions (the last rho_c share) are replaced
        assert set(views[name][6:]) <= set(range(11, 21))  # by far items, never seen ones
    replaced = [i for n in names for i in views[n][6:]]
    assert len(set(replaced)) == len(replaced) == 8  # the pool is gone through before an item comes back


def test_f_r_and_c_do_not_change_with_the_number_of_counterfactuals():
    space = clustered_space()
    rng = np.random.default_rng(2)
    histories = [rng.choice(np.arange(1, 21), size=rng.integers(3, 12), replace=False) for _ in range(5)]
    users = [f"u{i}" for i in range(5)]
    one = semantic_views(space, users, histories, SETTINGS)
    four = semantic_views(space, users, histories, settings_with(lumos_num_counterfactuals=4))
    six = semantic_views(space, users, histories, settings_with(lumos_num_counterfactuals=6))
    for a, b, c in zip(one, four, six, strict=True):
        assert {k: b[k] for k in ("F", "R", "C")} == a  # a views file of n_c = 1 keeps its content
        assert {k: c[k] for k in b} == b  # the first counterfactuals of a larger n_c are those of a smaller
    assert four == semantic_views(space, users, histories, settings_with(lumos_num_counterfactuals=4))
    alone = [
        semantic_views(space, [u], [h], settings_with(lumos_num_counterfactuals=4))[0]
        for u, h in zip(users, histories, strict=True)
    ]
    assert alone == four  # per user, not per batch
    reseeded = semantic_views(space, users, histories, settings_with(lumos_num_counterfactuals=4, seed=9))
    assert [v["C2"] for v in reseeded] != [v["C2"] for v in four]


def test_counterfactuals_repeat_only_when_the_far_pool_is_too_small():
    space = clustered_space()
    space.pool[12:21] = False  # the farthest item left is 11
    tight = settings_with(lumos_num_counterfactuals=3, lumos_far_fraction=0.01)  # a far pool of one item
    views = semantic_views(space, ["u"], [np.array([1, 2, 3, 4])], tight)[0]
    assert views["C"] == views["C2"] == views["C3"] == [1, 2, 3, 11]


def test_each_counterfactual_prompt_gets_its_own_far_candidates():
    space = clustered_space()
    history = np.array([1, 2, 3, 4, 5, 6])
    three = settings_with(lumos_num_counterfactuals=3, lumos_far_fraction=0.5)
    plan = plan_views(space, ["u"], [history], three, num_candidates=4)[0]
    lists = [plan.candidates[n] for n in ("C", "C2", "C3")]
    assert all(len(c) == 4 and set(c) <= set(range(11, 21)) for c in lists)
    assert len({tuple(c) for c in lists}) == 3
    semantic = plan_views(space, ["u"], [history], three)[0]
    assert plan.c_extra == semantic.c_extra  # candidates never change the semantic fallback
    assert plan.semantic_items("C3") == plan.c_extra[1] and plan.semantic_items("C") == plan.c_items
