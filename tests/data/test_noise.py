"""Noisy clients: the share replaced, its seeding, and that validation and test items are never touched."""

import numpy as np
import pytest
import torch
from conftest import TINY_ENGINE

from recbole_lumos.data.noise import client_histories, noisy_histories, noisy_history
from recbole_lumos.data.partition import training_histories
from recbole_lumos.errors import ConfigurationError


def test_exactly_the_share_of_items_is_replaced_by_other_items():
    history = torch.arange(1, 21)
    noisy = noisy_history(history, 0.25, num_items=30, rng=np.random.default_rng(0))
    assert noisy.shape == history.shape
    assert int((noisy != history).sum()) == 5  # 0.25 * 20, each replaced by another item
    assert int(noisy.min()) >= 1 and int(noisy.max()) <= 29  # catalogue ids only, never padding
    assert torch.equal(noisy_history(history, 0.0, 30, np.random.default_rng(0)), history)
    assert int((noisy_history(history, 1.0, 30, np.random.default_rng(0)) != history).sum()) == 20


def test_noise_depends_on_seed_and_user_only():
    histories = {u: torch.arange(1, 16) + u for u in range(1, 6)}
    tokens = {u: f"u{u}" for u in histories}
    first = noisy_histories(histories, 0.4, 40, seed=1, user_tokens=tokens)
    again = noisy_histories(histories, 0.4, 40, seed=1, user_tokens=tokens)
    alone = noisy_histories({3: histories[3]}, 0.4, 40, seed=1, user_tokens=tokens)
    other_seed = noisy_histories(histories, 0.4, 40, seed=2, user_tokens=tokens)
    assert all(torch.equal(first[u], again[u]) for u in histories)
    assert torch.equal(first[3], alone[3])  # the other clients do not change a client's noise
    assert any(not torch.equal(first[u], other_seed[u]) for u in histories)
    assert all(torch.equal(h, torch.arange(1, 16) + u) for u, h in histories.items())  # inputs untouched


def _prepared(data_path, **overrides):
    from recbole.data import create_dataset, data_preparation

    from recbole_lumos.config import build_config

    config = build_config("FedSASRec", "tiny", overrides={**TINY_ENGINE, "data_path": str(data_path), **overrides})
    return config, data_preparation(config, create_dataset(config))


def _split_items(data) -> list[torch.Tensor]:
    inter = data._dataset.inter_feat
    return [inter[data._dataset.iid_field].clone(), inter[data._dataset.item_id_list_field].clone()]


def test_noise_changes_training_histories_only(tiny_data):
    config, (train, valid, test) = _prepared(tiny_data, noise_ratio=0.5)
    before = [_split_items(split) for split in (train, valid, test)]
    clean = training_histories(train._dataset)
    noisy = client_histories(train._dataset, config)
    assert set(noisy) == set(clean)
    assert all(noisy[u].numel() == clean[u].numel() for u in clean)  # no validation or test item joins
    changed = sum(int((noisy[u] != clean[u]).sum()) for u in clean)
    assert changed == sum(int(0.5 * h.numel() + 0.5) for h in clean.values())
    after = [_split_items(split) for split in (train, valid, test)]
    for old, new in zip(before, after, strict=True):  # RecBole's splits, evaluation included, are untouched
        assert all(torch.equal(a, b) for a, b in zip(old, new, strict=True))
    assert client_histories(train._dataset, {**dict(config.final_config_dict), "noise_ratio": 0}).keys() == clean.keys()
    with pytest.raises(ConfigurationError, match="noise_ratio"):
        client_histories(train._dataset, {"noise_ratio": 1.5})


def test_a_noisy_run_is_evaluated_on_the_same_validation_and_test_items(tiny_data, tmp_path, monkeypatch):
    """Every evaluation batch (inputs, positives, masked history) is the same with and without noise."""
    from recbole.trainer import Trainer

    seen: list[list[torch.Tensor]] = []
    evaluate = Trainer._full_sort_batch_eval

    def spy(self, batched_data):
        interaction, scores, positive_u, positive_i = evaluate(self, batched_data)
        history = [] if batched_data[1] is None else list(batched_data[1])  # None: repeatable, nothing masked
        seen[-1].append(torch.cat([interaction["item_id_list"].flatten(), positive_u, positive_i, *history]))
        return interaction, scores, positive_u, positive_i

    monkeypatch.setattr(Trainer, "_full_sort_batch_eval", spy)
    from recbole_lumos.quick_start import run_model

    common = {**TINY_ENGINE, "data_path": str(tiny_data), "epochs": 1, "client_batch": 8, "num_negatives": 8}
    results = []
    for ratio in (0.0, 1.0):
        seen.append([])
        results.append(
            run_model("FedSASRec", "tiny", overrides={**common, "noise_ratio": ratio, "checkpoint_dir": f"s{ratio}"})
        )
    clean, noisy = seen
    assert len(clean) == len(noisy) > 0
    assert all(torch.equal(a, b) for a, b in zip(clean, noisy, strict=True))
    assert results[0].test_result != results[1].test_result  # the noise did change training
