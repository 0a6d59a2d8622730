"""Releasing RecBole's prefix samples keeps every user's training history exactly."""

import torch
from recbole.data import create_dataset, data_preparation

from recbole_lumos.config import build_config
from recbole_lumos.data.partition import release_prefix_samples, training_histories


def test_histories_survive_releasing_the_prefix_samples(tiny_data):
    config = build_config("SASRec", "tiny", overrides={"data_path": str(tiny_data)})
    train, _, _ = data_preparation(config, create_dataset(config))
    before = training_histories(train._dataset)
    width = train._dataset.inter_feat["item_id_list"].size(1)
    rows = train._dataset.inter_feat["item_id_list"].size(0)
    freed = release_prefix_samples(train._dataset)
    assert train._dataset.inter_feat["item_id_list"].shape == (rows, 1)
    assert freed >= rows * (width - 1) * 8  # the item lists at least (int64)
    after = training_histories(train._dataset)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[user], after[user]) for user in before)
    assert release_prefix_samples(train._dataset) == 0  # nothing left to release
