"""One packed forward/backward gives every client's one-step update, as one-by-one training does."""

import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_lumos.config import build_config
from recbole_lumos.data.partition import ClientPartition, IndexedPartition, collate_cohort, training_histories
from recbole_lumos.federated import packed
from recbole_lumos.federated.local_update import LocalSettings, LocalTrainer

SMALL = {
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 2,
    "n_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 6,  # short windows: most clients own several
    "hidden_dropout_prob": 0.0,
    "attn_dropout_prob": 0.0,
}
CLIENTS = 6


def _build(tiny_data, model_name="SASRec", **extra):
    config = build_config(model_name, "tiny", overrides={"data_path": str(tiny_data), **SMALL, **extra})
    train_data, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = config.model_class(config, train_data._dataset)
    partition = ClientPartition(training_histories(train_data._dataset), config["MAX_ITEM_LIST_LENGTH"])
    return model, partition


@pytest.fixture
def tiny_sasrec(tiny_data):
    return _build(tiny_data)


def _cohort(partition, clients=CLIENTS):
    return collate_cohort([IndexedPartition(partition)[i] for i in range(clients)])


def _assert_same(together, alone, atol):
    assert together.weight == alone.weight
    assert together.dense.keys() == alone.dense.keys()
    assert together.sparse.keys() == alone.sparse.keys()
    for name, delta in alone.dense.items():
        torch.testing.assert_close(together.dense[name], delta, rtol=1e-4, atol=atol, msg=name)
    for name, (rows, values) in alone.sparse.items():
        assert torch.equal(together.sparse[name][0], rows), name
        torch.testing.assert_close(together.sparse[name][1], values, rtol=1e-4, atol=atol, msg=name)


def _compare(trainer, cohort, negatives, shuffle=False):
    start = trainer.global_params()
    if shuffle:  # windows need not be grouped by client
        order = torch.randperm(cohort.owner.numel(), generator=torch.Generator().manual_seed(3))
        cohort.inputs, cohort.targets, cohort.owner = cohort.inputs[order], cohort.targets[order], cohort.owner[order]
        negatives = [n if n is None or n.dim() == 1 else n[order] for n in negatives]
    together = trainer.train_packed(start, cohort, negatives)
    # See test_local_update.py: the attention key bias has a true gradient of 0, and Adam turns
    # float noise there into a sizeable share of lr. Adam is compared at 1% of lr, SGD at float tolerance.
    atol = 1e-2 * trainer.settings.lr if trainer.settings.optimizer == "adam" else 1e-6
    for c in range(len(cohort)):
        own = cohort.owner == c
        client_negatives = [n if n is None or n.dim() == 1 else n[own] for n in negatives]
        alone = trainer.train_client(start, cohort.inputs[own], cohort.targets[own], client_negatives)
        _assert_same(together[c], alone, atol)
    return together


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("loss", ["ce", "sampled_ce", "bce"])
def test_packed_step_equals_one_by_one(tiny_sasrec, optimizer, loss, device):
    model, partition = tiny_sasrec
    model.to(device)
    settings = LocalSettings(local_epochs=1, optimizer=optimizer, lr=0.05, loss=loss, num_negatives=16, mu=0.1)
    trainer = LocalTrainer(model, settings)
    cohort = _cohort(partition).to(device)
    assert cohort.owner.numel() > len(cohort)  # some clients own several windows
    negatives = [trainer.draw_negatives(cohort.targets, torch.Generator().manual_seed(1))]
    together = _compare(trainer, cohort, negatives)
    assert all(bool(update.sparse) == (loss != "ce") for update in together)


@pytest.mark.parametrize("loss", ["ce", "sampled_ce", "bce"])
@pytest.mark.parametrize("chunk, loop, gather", [(4, 0, 1.0), (5, 100, 0.0), (1, 0, 0.0)])
def test_packed_step_in_small_chunks(tiny_sasrec, monkeypatch, loss, chunk, loop, gather):
    """Chunks that split clients, per-window and padded per-client sums, gathered or not."""
    monkeypatch.setattr(packed, "CHUNK_WINDOWS", chunk)
    monkeypatch.setattr(packed, "_LOOP_SEGMENTS", loop)
    monkeypatch.setattr(packed, "_LOOP_TOKENS", 10**9)
    monkeypatch.setattr(packed, "_GATHER_BELOW", gather)
    model, partition = tiny_sasrec
    trainer = LocalTrainer(model, LocalSettings(optimizer="sgd", lr=0.05, loss=loss, num_negatives=16))
    cohort = _cohort(partition, clients=10)
    _compare(trainer, cohort, [trainer.draw_negatives(cohort.targets, torch.Generator().manual_seed(5))])


@pytest.mark.parametrize("batch_heads", [False, True])
def test_packed_step_with_left_padding(tiny_sasrec, monkeypatch, batch_heads):
    """Windows padded at the front take RecBole's own attention mask."""
    monkeypatch.setattr(packed, "BATCH_HEADS", batch_heads)
    model, partition = tiny_sasrec
    trainer = LocalTrainer(model, LocalSettings(optimizer="sgd", lr=0.05, loss="sampled_ce", num_negatives=16))
    cohort = _cohort(partition)
    length = (cohort.inputs > 0).sum(1, keepdim=True)
    index = (torch.arange(cohort.inputs.size(1)) + length) % cohort.inputs.size(1)  # padding first
    cohort.inputs, cohort.targets = cohort.inputs.gather(1, index), cohort.targets.gather(1, index)
    assert (cohort.inputs[:, 0] == 0).any()
    _compare(trainer, cohort, [trainer.draw_negatives(cohort.targets, torch.Generator().manual_seed(6))])


@pytest.mark.parametrize("loss", ["sampled_ce", "bce"])
def test_packed_step_with_dense_upload_and_shuffled_windows(tiny_sasrec, loss):
    model, partition = tiny_sasrec
    settings = LocalSettings(optimizer="sgd", lr=0.05, loss=loss, num_negatives=16, sparse_upload=False)
    trainer = LocalTrainer(model, settings)
    cohort = _cohort(partition)
    negatives = [trainer.draw_negatives(cohort.targets, torch.Generator().manual_seed(2))]
    together = _compare(trainer, cohort, negatives, shuffle=True)
    assert not any(update.sparse for update in together)


def test_packed_step_for_cl4srec_item_table_with_mask_row(tiny_data):
    model, partition = _build(tiny_data, "CL4SRec", loss_type="CE", lambda_cl=0.0)
    assert packed.supports(model)  # without its contrastive term CL4SRec is SASRec with a mask row
    model.lambda_cl = 0.1
    assert packed.supports(model)  # with it, each client's NT-Xent joins the pass (test_local_update.py)
    model.lambda_cl = 0.0
    trainer = LocalTrainer(model, LocalSettings(optimizer="adam", lr=0.05, loss="sampled_ce", num_negatives=16))
    cohort = _cohort(partition)
    _compare(trainer, cohort, [trainer.draw_negatives(cohort.targets, torch.Generator().manual_seed(4))])


def test_cohort_updates_dispatch(tiny_sasrec, monkeypatch):
    model, partition = tiny_sasrec
    cohort = _cohort(partition)
    calls = []
    monkeypatch.setattr(LocalTrainer, "train_functional", lambda self, *args: calls.append("functional") or [])
    one_step = LocalTrainer(model, LocalSettings(local_epochs=1, loss="sampled_ce", num_negatives=8))
    updates = one_step.cohort_updates(one_step.global_params(), cohort, torch.Generator().manual_seed(0))
    assert len(updates) == len(cohort) and not calls
    two_steps = LocalTrainer(model, LocalSettings(local_epochs=2, loss="sampled_ce", num_negatives=8))
    two_steps.cohort_updates(two_steps.global_params(), cohort, torch.Generator().manual_seed(0))
    assert calls == ["functional"]
    model.all_positions_loss = lambda *args: None  # a model with its own loss is not packed
    assert not packed.supports(model)
    one_step.train_packed(one_step.global_params(), cohort, [None])
    assert calls == ["functional", "functional"]


def test_packed_step_applies_dropout(tiny_data):
    model, partition = _build(tiny_data, hidden_dropout_prob=0.5, attn_dropout_prob=0.5)
    model.train()
    trainer = LocalTrainer(model, LocalSettings(optimizer="sgd", lr=0.05, loss="sampled_ce", num_negatives=8))
    cohort = _cohort(partition)
    negatives = [trainer.draw_negatives(cohort.targets, torch.Generator().manual_seed(0))]
    start = trainer.global_params()
    torch.manual_seed(0)
    first = trainer.train_packed(start, cohort, negatives)
    torch.manual_seed(1)
    second = trainer.train_packed(start, cohort, negatives)
    name = "trm_encoder.layer.0.feed_forward.dense_1.weight"
    assert not torch.allclose(first[0].dense[name], second[0].dense[name])
    assert all(torch.isfinite(t).all() for update in first for t in update.tensors() if t.is_floating_point())


@pytest.mark.parametrize("p", [0.5, 0.2, 0.9])
def test_fast_dropout_keeps_one_minus_p_and_rescales(p):
    torch.manual_seed(0)
    dropout = torch.nn.Dropout(p)
    out = packed._dropout(torch.ones(400, 500), dropout)
    assert float((out != 0).float().mean()) == pytest.approx(1 - p, abs=5e-3)
    assert torch.allclose(out[out != 0], torch.tensor(1 / (1 - p)))
    assert torch.equal(packed._dropout(torch.ones(3), dropout.eval()), torch.ones(3))


@pytest.mark.parametrize("owners", ["every client", "some clients"])
def test_per_client_outer_products_of_ragged_token_runs(owners):
    """``_Segments.outer`` (many clients, few tokens each: the padded batched path) equals a
    per-client sum of outer products, whether it accumulates in place (every client of the
    output present, in order) or scatters into the clients it has."""
    generator = torch.Generator().manual_seed(0)
    clients = 12
    counts = torch.randint(1, 4, (clients,), generator=generator)
    if owners == "some clients":
        counts[[2, 7]] = 0
    owner = torch.repeat_interleave(torch.arange(clients), counts)
    grad = torch.randn(owner.numel(), 5, generator=generator)
    x = torch.randn(owner.numel(), 3, generator=generator)
    segments = packed._Segments(owner)
    assert not segments.loop  # the batched path, not one matmul per client
    out = torch.randn(clients, 5, 3, generator=generator)
    expected = out.clone()
    for c in range(clients):
        expected[c] += grad[owner == c].T @ x[owner == c]
    segments.outer(grad, x, out)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("loss", ["ce", "sampled_ce"])
def test_batched_attention_heads_give_the_same_step(tiny_sasrec, monkeypatch, loss):
    """All heads in one product (the default off the CPU) is the per-head loop's maths."""
    model, partition = tiny_sasrec
    monkeypatch.setattr(packed, "BATCH_HEADS", True)
    settings = LocalSettings(local_epochs=1, optimizer="sgd", lr=0.05, loss=loss, num_negatives=16)
    trainer = LocalTrainer(model, settings)
    cohort = _cohort(partition)
    negatives = [trainer.draw_negatives(cohort.targets, torch.Generator().manual_seed(1))]
    _compare(trainer, cohort, negatives)
    monkeypatch.setattr(packed, "CHUNK_WINDOWS", 3)  # late windows: the last layer starts past position 0
    _compare(trainer, _cohort(partition), negatives)
