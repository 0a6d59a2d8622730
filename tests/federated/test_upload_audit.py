"""What leaves a client: backbone parameter deltas only (no ids, no data, nothing else)."""

import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_lumos.config import build_config
from recbole_lumos.data.partition import ClientPartition, IndexedPartition, collate_cohort, training_histories
from recbole_lumos.federated.local_update import SPARSE_TABLES, LocalSettings, LocalTrainer
from recbole_lumos.federated.privacy import privatize


def _setup(tiny_data, model="SASRec"):
    config = build_config(model, "tiny", overrides={"data_path": str(tiny_data), "hidden_size": 16, "inner_size": 32,
                                                    "n_layers": 1, "n_heads": 2, "MAX_ITEM_LIST_LENGTH": 10})
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = config.model_class(config, train_data._dataset)
    partition = ClientPartition(training_histories(train_data._dataset), 10)
    return model, partition


def _assert_only_backbone(update, model, partition, cohort_users):
    params = dict(model.named_parameters())
    for name, tensor in update.dense.items():
        assert name in params and tensor.shape == params[name].shape and tensor.is_floating_point()
    for name, (index, rows) in update.sparse.items():
        assert name in SPARSE_TABLES and rows.is_floating_point() and rows.shape[1:] == params[name].shape[1:]
        assert index.dtype == torch.long and index.dim() == 1
    # Nothing else is sent: no user id, no raw history or window, no weight of another module.
    assert set(update.dense) | set(update.sparse) == set(params)
    # The only integers on the wire are sparse row indices, each a sorted set of rows: a
    # history, a window or a user id (ordered, repeated, or not an index) cannot pass.
    integers = [t for t in update.tensors() if not t.is_floating_point()]
    indices = [index for index, _ in update.sparse.values()]
    assert len(integers) == len(indices) and all(t is i for t, i in zip(integers, indices, strict=True))
    for index in indices:
        assert torch.equal(index, torch.unique(index))
    for tensor in update.tensors():
        for client in partition.clients:
            assert not (tensor.dtype == torch.long and tensor.numel() == client.history.numel()
                        and torch.equal(tensor, client.history))


def test_the_audit_catches_a_leaked_history(tiny_data):
    """The audit can fail: an upload that carries a history as its row indices is caught."""
    model, partition = _setup(tiny_data)
    trainer = LocalTrainer(model, LocalSettings(loss="sampled_ce", num_negatives=4))
    cohort = collate_cohort([IndexedPartition(partition)[0]])
    (update,) = trainer.cohort_updates(trainer.global_params(), cohort, torch.Generator().manual_seed(0))
    history = partition.clients[0].history
    table = SPARSE_TABLES[0]
    leaked = type(update)(
        dense=update.dense,
        sparse={table: (history.clone(), torch.zeros(history.numel(), update.sparse[table][1].size(1)))},
        weight=update.weight,
    )
    with pytest.raises(AssertionError):
        _assert_only_backbone(leaked, model, partition, cohort.users)


def test_sparse_and_dense_uploads_hold_only_backbone_deltas(tiny_data):
    for model_name in ("SASRec", "CL4SRec"):
        model, partition = _setup(tiny_data, model_name)
        for loss in ("ce", "sampled_ce"):
            trainer = LocalTrainer(model, LocalSettings(loss=loss, num_negatives=4))
            cohort = collate_cohort([IndexedPartition(partition)[i] for i in range(3)])
            updates = trainer.cohort_updates(trainer.global_params(), cohort, torch.Generator().manual_seed(0))
            for update in updates:
                _assert_only_backbone(update, model, partition, cohort.users)
                assert bool(update.sparse) == (loss != "ce")


def test_local_dp_upload_is_dense_floats_only(tiny_data):
    model, partition = _setup(tiny_data)
    trainer = LocalTrainer(model, LocalSettings(loss="sampled_ce", num_negatives=4))
    cohort = collate_cohort([IndexedPartition(partition)[0]])
    (update,) = trainer.cohort_updates(trainer.global_params(), cohort, None)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    private = privatize(update, clip=1.0, noise_multiplier=1.0, shapes=shapes, generator=torch.Generator())
    assert not private.sparse
    assert all(t.is_floating_point() for t in private.tensors())  # no index tensor reveals items
