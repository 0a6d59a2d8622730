"""A run's clients: fake users join after the real ones, are sampled like them, never evaluated, never seen
by a benign client's views; noisy clients' views come from their noisy histories."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ENGINE
from generation.conftest import prepare, save_tiny_language_model

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.population import build_population
from recbole_lumos.federated.runner import client_loader
from recbole_lumos.model.registry import resolve_model
from recbole_lumos.quick_start import run_model
from recbole_lumos.report.exposure import ExposureMeter

FAST = {**TINY_ENGINE, "client_batch": 8, "num_negatives": 8}


def population(model: str, data_path, **overrides):
    config, dataset, train = prepare("tiny", data_path, **{**FAST, **overrides})
    config["model"], config["federated"] = resolve_model(model).model_class.__name__, True
    recommender = resolve_model(model).model_class(config, train)
    return config, dataset, build_population(config, recommender, train)


def test_fake_clients_come_after_the_real_users_and_are_sampled_like_them(tiny_data):
    config, dataset, clean = population("SASRec", tiny_data)
    _, _, attacked = population("SASRec", tiny_data, attack="bandwagon", attack_ratio=0.25)
    fake = attacked.fake.users
    assert len(attacked.partition) == len(clean.partition) + 10 and len(fake) == 10  # 0.25 * 40 benign
    assert fake == list(range(dataset.user_num, dataset.user_num + 10))  # fresh ids beyond the real users
    assert [c.user for c in attacked.partition.clients[-10:]] == fake
    for before, after in zip(clean.partition.clients, attacked.partition.clients, strict=False):
        assert before.user == after.user and torch.equal(before.history, after.history)
    assert attacked.benign_indices() == list(range(len(clean.partition)))
    config["client_fraction"] = 0.5
    sampler = client_loader(config, attacked.partition, federated=True).batch_sampler
    counts = np.zeros(len(attacked.partition))
    for round_index in range(40):
        counts[sampler.round_clients(round_index)] += 1
    assert counts[-10:].min() > 0  # every fake client is drawn
    assert abs(counts[-10:].mean() - counts[:-10].mean()) < 4  # about 20 rounds each, like the benign


def test_fake_users_are_never_evaluated(tiny_data, monkeypatch):
    evaluated: list[torch.Tensor] = []
    add = ExposureMeter.add

    def spy(self, users, scores):
        evaluated.append(users)
        add(self, users, scores)

    monkeypatch.setattr(ExposureMeter, "add", spy)
    result = run_model(
        "FedSASRec",
        "tiny",
        overrides={**FAST, "data_path": str(tiny_data), "epochs": 2, "attack": "popular", "attack_ratio": 0.2},
    )
    users = torch.cat(evaluated)
    assert result.num_clients == 48 and result.attack["malicious_clients"] == 8
    assert sorted(users.tolist()) == list(range(1, 41))  # each real user once, no fake one
    assert set(result.test_result) >= {"er@10", "er@20"} and len(result.attack["target_items"]) == 10


@pytest.fixture(scope="module")
def tiny_lm_folder(tmp_path_factory):
    return save_tiny_language_model(tmp_path_factory.mktemp("lm") / "model")


def test_benign_views_never_see_the_fake_users(tiny_data, tiny_lm_folder, tmp_path):
    # Views from the items of the training split: a fake history reaching the generator would change them.
    lumos = {"lumos_llm": str(tiny_lm_folder), "lumos_generation": "semantic", "lumos_embed_batch_size": 16}
    lumos["lumos_item_pool"] = "train"
    _, dataset, clean = population("LUMOS", tiny_data, lumos_cache_dir=str(tmp_path / "a"), **lumos)
    _, _, attacked = population(
        "LUMOS",
        tiny_data,
        attack="random",
        attack_ratio=0.1,
        target_items=3,
        lumos_cache_dir=str(tmp_path / "b"),
        **lumos,
    )
    assert attacked.generation["generated_users"] == 40  # generated anew, not read from the first run's cache
    fake = set(attacked.fake.users)
    written_users = {line.split("\t")[0] for line in Path(attacked.generation["path"]).read_text().splitlines()[1:]}
    assert written_users == {str(t) for t in dataset.field2id_token[dataset.uid_field][1:]}
    benign = [c for c in attacked.partition.clients if c.user not in fake]
    for before, after in zip(clean.partition.clients, benign, strict=True):
        assert torch.equal(before.views, after.views)  # every benign block is what it was without attack
    targets = set(attacked.targets.tolist())
    for client in attacked.partition.clients:
        if client.user in fake:  # a fake client's own F view ends with the targets
            k_f = 3
            assert set(client.views[1][client.views[1] > 0][-k_f:].tolist()) <= targets


def test_a_noisy_clients_views_are_written_from_its_noisy_history(tiny_data, tiny_lm_folder, tmp_path):
    lumos = {"lumos_llm": str(tiny_lm_folder), "lumos_generation": "semantic", "lumos_embed_batch_size": 16}
    _, _, clean = population("LUMOS", tiny_data, **lumos)
    _, _, noisy = population("LUMOS", tiny_data, noise_ratio=0.5, **lumos)
    assert noisy.generation["path"] != clean.generation["path"]  # noisy views live in their own cache folder
    assert "noise0.5-seed2020" in noisy.generation["path"]
    changed = 0
    for plain, client in zip(clean.partition.clients, noisy.partition.clients, strict=True):
        clean_history = noisy.clean_histories[client.user]
        assert torch.equal(plain.history, clean_history)  # ER@K's "has interacted" stays the real history
        changed += int(not torch.equal(client.history, clean_history))
        kept = min(client.history.numel(), 10 - 3)  # F starts with the last L - k_f items of the history
        assert torch.equal(client.views[0][: min(client.history.numel(), 10)], client.history[-10:])
        assert torch.equal(client.views[1][:kept], client.history[-kept:])
    assert changed == len(noisy.partition)


def test_random_counterfactuals_keep_everything_but_the_items_the_generator_brought_in(tiny_data, tiny_lm_folder):
    lumos = {"lumos_llm": str(tiny_lm_folder), "lumos_generation": "semantic", "lumos_embed_batch_size": 16}
    lumos["lumos_num_counterfactuals"] = 2
    _, _, generated = population("LUMOS", tiny_data, **lumos)
    _, _, randomized = population("LUMOS", tiny_data, lumos_counterfactual_items="random", **lumos)
    changed = 0
    for ours, theirs in zip(generated.partition.clients, randomized.partition.clients, strict=True):
        assert ours.views.shape == theirs.views.shape == (5, ours.views.size(1))
        assert torch.equal(ours.views[:3], theirs.views[:3])  # anchor, F and R untouched
        kept = torch.isin(ours.views[3:], ours.history) | (ours.views[3:] == 0)
        assert torch.equal(ours.views[3:][kept], theirs.views[3:][kept])
        assert not torch.isin(theirs.views[3:][~kept], ours.history).any()
        changed += int(not torch.equal(ours.views[3:], theirs.views[3:]))
    assert changed == len(generated.partition)
    with pytest.raises(ConfigurationError, match="lumos_counterfactual_items"):
        population("LUMOS", tiny_data, lumos_counterfactual_items="shuffled", **lumos)
