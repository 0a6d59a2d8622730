"""Attacks: the settings' checks, the targets, the fake users' data, and what each poisoned upload changes."""

import numpy as np
import pytest
import torch

from recbole_lumos.data.partition import Cohort
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.attacks import (
    POPULAR_SHARE,
    AttackSettings,
    ModelPoisoning,
    fake_clients,
    item_popularity,
    target_item_ids,
)
from recbole_lumos.federated.client_round import PrivacySettings, train_cohort_round
from recbole_lumos.federated.update import ClientUpdate

NUM_ITEMS = 41  # ids 1..40


def benign_histories(n_users: int = 30) -> dict[int, torch.Tensor]:
    """Item i is more popular the smaller i is: user u holds items 1..(5 + u % 10) and item 20 + u % 20."""
    return {u: torch.tensor([*range(1, 6 + u % 10), 20 + u % 20]) for u in range(1, n_users + 1)}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"attack": "shilling"}, "Unknown attack 'shilling'"),
        ({"attack": "bandwagon", "attack_ratio": 0}, "attack_ratio"),
        ({"attack": "bandwagon", "attack_ratio": 1.5}, "attack_ratio"),
        ({"attack": "scaled", "attack_scale": -2}, "attack_scale"),
        ({"attack": "gaussian", "attack_std": 0}, "attack_std"),
        ({"attack": "random", "target_items": 0}, "target_items"),
        ({"attack": "random", "target_items": "lots"}, "target_items"),
        ({"attack": "random", "attack_length": 1}, "attack_length"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(settings, message):
    with pytest.raises(ConfigurationError, match=message):
        AttackSettings.from_config(settings)


def test_no_attack_by_default_and_exposure_only_when_asked():
    assert not AttackSettings.from_config({}).active and not AttackSettings.from_config({}).measures_exposure
    assert AttackSettings.from_config({"attack_ratio": 7}).attack == "none"  # the ratio is unused without attack
    assert AttackSettings.from_config({"target_items": 3}).measures_exposure
    assert AttackSettings.from_config({"target_items": [50, "181"]}).targets == ("50", "181")


def test_targets_are_cold_items_drawn_with_the_seed_or_named_tokens():
    popularity = item_popularity(benign_histories(), NUM_ITEMS)
    cold = set(np.argsort(popularity[1:], kind="stable")[:20] + 1)  # the least popular half
    first = target_item_ids(4, popularity, seed=3, token_to_id={})
    assert len(first) == 4 and set(first) <= cold
    assert np.array_equal(first, target_item_ids(4, popularity, seed=3, token_to_id={}))
    assert not np.array_equal(first, target_item_ids(4, popularity, seed=4, token_to_id={}))
    tokens = {"[PAD]": 0, "a": 7, "b": 3}
    assert target_item_ids(("a", "b"), popularity, 3, tokens).tolist() == [3, 7]
    with pytest.raises(ConfigurationError, match="'zz'.*not in the catalogue"):
        target_item_ids(("a", "zz"), popularity, 3, tokens)
    with pytest.raises(ConfigurationError, match="not in the catalogue"):
        target_item_ids(("[PAD]",), popularity, 3, tokens)


@pytest.mark.parametrize("attack", ["random", "popular", "bandwagon", "scaled"])
def test_fake_users_mix_fillers_with_the_targets_under_fresh_ids(attack):
    benign = benign_histories()
    before = {u: h.clone() for u, h in benign.items()}
    targets = np.array([33, 36, 39])
    settings = AttackSettings.from_config({"attack": attack, "attack_ratio": 0.2, "attack_length": 12})
    fake = fake_clients(settings, benign, targets, first_user=31, num_items=NUM_ITEMS, seed=5)
    assert fake.users == list(range(31, 37))  # round(0.2 * 30) = 6 fresh ids after the real users
    assert fake.blocks is None  # no views asked
    assert all(torch.equal(benign[u], before[u]) for u in benign)
    again = fake_clients(settings, benign, targets, first_user=31, num_items=NUM_ITEMS, seed=5)
    assert all(torch.equal(fake.histories[u], again.histories[u]) for u in fake.users)
    popularity = item_popularity(benign, NUM_ITEMS)
    ranked = [i for i in np.argsort(-popularity, kind="stable") if i not in (0, *targets)]
    popular = set(ranked[: max(int(np.ceil(POPULAR_SHARE * 40)), 6)])
    fillers = []
    for history in fake.histories.values():
        assert history.numel() == 12
        assert set(history[1::2].tolist()) == set(targets.tolist())  # every second item is a target
        assert not set(history[0::2].tolist()) & set(targets.tolist())  # the others never are
        fillers += history[0::2].tolist()
    in_popular = np.mean([f in popular for f in fillers])
    expected = {"random": (0.0, 0.6), "popular": (1.0, 1.0), "bandwagon": (0.5, 0.95), "scaled": (0.5, 0.95)}[attack]
    assert expected[0] <= in_popular <= expected[1]


def test_no_attack_makes_no_fake_user():
    fake = fake_clients(AttackSettings(), benign_histories(), np.array([33]), 31, NUM_ITEMS, seed=5)
    assert fake.histories == {}


def test_a_fake_lumos_client_writes_views_that_promote_the_targets():
    targets = np.array([33, 36])
    settings = AttackSettings.from_config({"attack": "popular", "attack_ratio": 0.1, "attack_length": 8})
    views = {"max_len": 6, "k_f": 2, "rho_r": 0.5, "num_counterfactuals": 2}
    fake = fake_clients(settings, benign_histories(), targets, 31, NUM_ITEMS, seed=1, views=views)
    for user, block in fake.blocks.items():
        history = fake.histories[user]
        assert block.shape == (5, 6)  # anchor, F, R, C, C2
        assert torch.equal(block[0], history[-6:])  # the anchor is its recent history
        assert torch.equal(block[1, :4], history[-4:]) and set(block[1, 4:].tolist()) <= set(targets.tolist())
        filler_positions = ~torch.isin(history[-6:], torch.from_numpy(targets))
        assert int((block[2] != history[-6:]).sum()) >= 1  # R: fillers turned into targets
        assert set(block[2][filler_positions].tolist()) & set(targets.tolist())
        assert bool((block[3:] > 0).all())  # counterfactuals: any catalogue items


UPDATE = ClientUpdate(
    dense={"bias": torch.tensor([0.5, -1.0])},
    sparse={"item": (torch.tensor([1, 3]), torch.tensor([[1.0, 2.0], [-3.0, 4.0]]))},
    weight=7.0,
)


def test_scaled_and_sign_flipped_updates_change_the_values_only():
    scaled = ModelPoisoning("scaled", [9], scale=10.0).apply(UPDATE, 9, round_index=0)
    flipped = ModelPoisoning("sign_flip", [9]).apply(UPDATE, 9, round_index=0)
    for poisoned, factor in ((scaled, 10.0), (flipped, -1.0)):
        assert torch.equal(poisoned.dense["bias"], UPDATE.dense["bias"] * factor)
        assert torch.equal(poisoned.sparse["item"][0], UPDATE.sparse["item"][0])  # the same rows
        assert torch.equal(poisoned.sparse["item"][1], UPDATE.sparse["item"][1] * factor)
        assert poisoned.weight == 7.0
    assert torch.equal(UPDATE.dense["bias"], torch.tensor([0.5, -1.0]))  # the honest update is not modified


def test_a_gaussian_update_is_seeded_noise_of_the_configured_std_on_the_same_rows():
    big = ClientUpdate(dense={"w": torch.zeros(200, 100)}, sparse={"item": (torch.tensor([2, 5]), torch.ones(2, 50))})
    attack = ModelPoisoning("gaussian", [4], std=0.3, seed=1)
    noise = attack.apply(big, 4, round_index=2)
    assert noise.dense["w"].std().item() == pytest.approx(0.3, rel=0.02)
    assert abs(noise.dense["w"].mean().item()) < 0.01
    assert torch.equal(noise.sparse["item"][0], torch.tensor([2, 5])) and noise.sparse["item"][1].shape == (2, 50)
    assert torch.equal(attack.apply(big, 4, 2).dense["w"], noise.dense["w"])  # reproducible
    assert not torch.equal(attack.apply(big, 4, 3).dense["w"], noise.dense["w"])  # new noise every round


class _FixedUpdates:
    """A stand-in for LocalTrainer: every cohort gets the same honest updates."""

    def __init__(self, updates: list[ClientUpdate]) -> None:
        self.updates = updates

    def cohort_updates(self, global_params, cohort, negatives, one_by_one):
        return [ClientUpdate(dict(u.dense), dict(u.sparse), u.weight) for u in self.updates]


@pytest.mark.parametrize("private", [False, True])
def test_only_the_malicious_clients_uploads_change(private):
    honest = [
        ClientUpdate(dense={"bias": torch.tensor([0.1 * i, -0.2])}, sparse={}, weight=float(i)) for i in range(1, 4)
    ]
    cohort = Cohort(
        clients=[0, 1, 2],
        users=torch.tensor([5, 40, 6]),
        inputs=torch.zeros(3, 2, dtype=torch.long),
        targets=torch.zeros(3, 2, dtype=torch.long),
        owner=torch.arange(3),
        weights=torch.ones(3),
    )
    params = {"bias": torch.zeros(2)}
    privacy = PrivacySettings(clip=1.0, noise_multiplier=0.5) if private else PrivacySettings()

    def round_(poisoning):
        return train_cohort_round(
            _FixedUpdates(honest), params, cohort, None, torch.Generator().manual_seed(0), privacy, False, poisoning, 3
        )

    clean = round_(None)
    attacked = round_(ModelPoisoning("scaled", [40], scale=10.0))
    for index in (0, 2):  # benign clients: the very same upload, local DP noise included
        assert torch.equal(attacked[index].dense["bias"], clean[index].dense["bias"])
    assert torch.equal(attacked[1].dense["bias"], honest[1].dense["bias"] * 10)  # no local DP on the malicious one
