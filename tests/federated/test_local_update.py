"""All-position training equals prefix training; cohorts equal one-by-one."""

import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_lumos.config import build_config
from recbole_lumos.data.partition import (
    ClientPartition,
    IndexedPartition,
    collate_cohort,
    make_windows,
    training_histories,
)
from recbole_lumos.federated.local_update import LocalSettings, LocalTrainer
from recbole_lumos.model.next_item import (
    AllPositionsObjective,
    all_position_hidden,
    next_item_loss,
)

SMALL = {
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 20,
    "hidden_dropout_prob": 0.0,
    "attn_dropout_prob": 0.0,
}


@pytest.fixture
def tiny_sasrec(tiny_data):
    config = build_config("SASRec", "tiny", overrides={"data_path": str(tiny_data), **SMALL})
    train_data, _, _ = data_preparation(config, create_dataset(config))
    from recbole.model.sequential_recommender import SASRec

    torch.manual_seed(0)
    model = SASRec(config, train_data._dataset)
    return config, train_data._dataset, model


def test_all_position_loss_equals_sum_of_recbole_prefix_losses(tiny_sasrec):
    config, train_dataset, model = tiny_sasrec
    histories = training_histories(train_dataset)
    partition = ClientPartition(histories, config["MAX_ITEM_LIST_LENGTH"])
    inter = train_dataset.inter_feat
    checked = 0
    for client in partition.clients[:5]:
        rows = inter[inter["user_id"] == client.user]
        prefix_total = model.calculate_loss(rows) * len(rows)
        hidden = all_position_hidden(model, client.inputs)
        ours = next_item_loss(hidden, client.targets, model.item_embedding.weight, "ce", reduction="sum")
        assert client.num_positions == len(rows)
        assert ours.item() == pytest.approx(prefix_total.item(), rel=1e-5)
        checked += 1
    assert checked == 5


@pytest.mark.parametrize("loss", ["ce", "sampled_ce", "bce"])
def test_loss_without_padding_rows_equals_the_masked_loss(loss):
    """Plain tensors drop the padded positions before scoring; under vmap they are masked.
    Both must give the same loss and the same gradients."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, 8, generator=generator, requires_grad=True)
    items = torch.randn(30, 8, generator=generator, requires_grad=True)
    targets = torch.randint(1, 30, (3, 6), generator=generator)
    targets[0, :4] = 0  # padding: a short window
    targets[2, 1] = 0
    negatives = {
        "ce": None,
        "sampled_ce": torch.randint(1, 30, (7,), generator=generator),
        "bce": torch.randint(1, 30, (3, 6), generator=generator),
    }[loss]
    plain = next_item_loss(hidden, targets, items, loss, negatives)
    plain_grads = torch.autograd.grad(plain, [hidden, items])

    def masked(h, w):  # under vmap (a batch of one) the masked formulation runs
        return next_item_loss(h, targets, w, loss, negatives)

    from torch.func import vmap

    wrapped = vmap(masked, in_dims=(0, None))(hidden.unsqueeze(0), items)[0]
    wrapped_grads = torch.autograd.grad(wrapped, [hidden, items])
    assert plain.item() == pytest.approx(wrapped.item(), rel=1e-6)
    for ours, reference in zip(plain_grads, wrapped_grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_histories_exclude_validation_and_test_items(tiny_data):
    config = build_config("SASRec", "tiny", overrides={"data_path": str(tiny_data), **SMALL})
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    histories = training_histories(train_data._dataset)
    raw: dict[str, list[tuple[float, str]]] = {}
    for line in (tiny_data / "tiny" / "tiny.inter").read_text().splitlines()[1:]:
        user, item, time = line.split("\t")
        raw.setdefault(user, []).append((float(time), item))
    assert len(histories) == len(raw)
    for user, history in histories.items():
        events = [item for _, item in sorted(raw[dataset.id2token("user_id", user)])]
        assert list(dataset.id2token("item_id", history.numpy())) == events[:-2]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("loss", ["ce", "sampled_ce", "bce"])
def test_cohort_training_equals_one_by_one(tiny_sasrec, optimizer, loss):
    config, train_dataset, model = tiny_sasrec
    partition = ClientPartition(training_histories(train_dataset), config["MAX_ITEM_LIST_LENGTH"])
    settings = LocalSettings(local_epochs=2, optimizer=optimizer, lr=0.05, loss=loss, num_negatives=16)
    trainer = LocalTrainer(model, settings)
    start = trainer.global_params()
    cohort = collate_cohort([IndexedPartition(partition)[i] for i in range(4)])
    generator = torch.Generator().manual_seed(1)
    negatives = [trainer.draw_negatives(cohort.targets, generator) for _ in range(settings.local_epochs)]
    together = trainer.train_functional(start, cohort, negatives)
    # The attention key bias has a true gradient of 0 (softmax ignores a shift shared by all keys).
    # Adam divides by sqrt(v), so float noise of ~1e-9 there becomes a step of a sizeable share of
    # lr, and the second step carries it into the key weights. Adam is therefore compared at 1% of
    # lr (a full Adam step is ~lr per coordinate); SGD at plain float tolerance.
    atol = 1e-2 * settings.lr if optimizer == "adam" else 1e-6
    for c in range(4):
        own = cohort.owner == c
        client_negatives = [n if n is None or n.dim() == 1 else n[own] for n in negatives]
        alone = trainer.train_client(start, cohort.inputs[own], cohort.targets[own], client_negatives)
        assert alone.weight == together[c].weight
        for name, delta in alone.dense.items():
            torch.testing.assert_close(together[c].dense[name], delta, rtol=1e-4, atol=atol, msg=name)
        for name, (rows, values) in alone.sparse.items():
            assert torch.equal(together[c].sparse[name][0], rows)
            torch.testing.assert_close(together[c].sparse[name][1], values, rtol=1e-4, atol=atol)
        assert bool(alone.sparse) == (loss != "ce")


def test_sparse_upload_sends_only_touched_rows(tiny_sasrec):
    config, train_dataset, model = tiny_sasrec
    partition = ClientPartition(training_histories(train_dataset), config["MAX_ITEM_LIST_LENGTH"])
    trainer = LocalTrainer(model, LocalSettings(loss="sampled_ce", num_negatives=4))
    client = partition.clients[0]
    negatives = [torch.tensor([1, 2, 3, 4])]
    update = trainer.train_client(trainer.global_params(), client.inputs, client.targets, negatives)
    rows, _ = update.sparse["item_embedding.weight"]
    expected = torch.unique(torch.cat([client.history, negatives[0]]))
    assert torch.equal(rows, expected)
    dense = LocalTrainer(model, LocalSettings(loss="ce")).train_client(
        trainer.global_params(), client.inputs, client.targets, [None]
    )
    assert update.num_bytes() < dense.num_bytes()


def test_objective_matches_model_loss_under_functional_call(tiny_sasrec):
    _, _, model = tiny_sasrec
    objective = AllPositionsObjective(model, "ce")
    inputs = torch.tensor([[1, 2, 3, 0]])
    targets = torch.tensor([[2, 3, 4, 0]])
    direct = objective(inputs, targets)
    params = {f"model.{k}": v for k, v in model.named_parameters()}
    functional = torch.func.functional_call(objective, params, (inputs, targets))
    assert direct.item() == pytest.approx(functional.item())


@pytest.mark.parametrize("stride", [None, 5, 3, 1])
def test_windows_train_every_position_once_with_enough_context(stride):
    max_len = 10
    history = torch.arange(1, 38)  # 36 next-item positions
    inputs, targets = make_windows(history, max_len, stride)
    trained = []
    for window_inputs, window_targets in zip(inputs, targets, strict=True):
        for position in (window_targets > 0).nonzero().flatten().tolist():
            context = int(window_inputs[: position + 1].gt(0).sum())
            target = int(window_targets[position])
            # The target's own input is the item right before it, and the context ends there.
            assert int(window_inputs[position]) == target - 1
            if target - 1 > max_len:  # beyond the first window
                assert context >= max_len - (stride or max_len // 2)
            trained.append(target)
    assert sorted(trained) == list(range(2, 38))  # each position exactly once


def _lumos_with_views(tiny_data, counterfactuals: int = 1, **extra):
    """A tiny LUMOS and a partition whose clients carry hand-made view blocks."""
    from recbole_lumos.data.view_blocks import view_blocks
    from recbole_lumos.model.lumos import LUMOS

    overrides = {"data_path": str(tiny_data), **SMALL, "lambda_cl": 0.5, "lumos_num_counterfactuals": counterfactuals}
    config = build_config("LUMOS", "tiny", overrides={**overrides, **extra})
    train_data, _, _ = data_preparation(config, create_dataset(config))
    dataset = train_data._dataset
    torch.manual_seed(0)
    model = LUMOS(config, dataset)
    histories = training_histories(dataset)
    # Hand-made views (the generator has its own tests): each user's F/R/C are shifted copies of its history.
    views = {
        dataset.id2token(dataset.uid_field, user): {
            name: list(dataset.id2token(dataset.iid_field, ((h + shift) % (model.n_items - 1)) + 1))
            for name, shift in (("F", 1), ("R", 2), ("C", 7))
        }
        for user, h in histories.items()
    }
    blocks = view_blocks(histories, views, dataset, config["MAX_ITEM_LIST_LENGTH"])
    for user, block in blocks.items():  # counterfactuals 2..n_c: the first one shifted again
        extra = [
            torch.where(block[3] > 0, (block[3] + 5 * k) % (model.n_items - 1) + 1, 0)
            for k in range(1, counterfactuals)
        ]
        blocks[user] = torch.cat([block[:4], *[row.unsqueeze(0) for row in extra]])
    return model, config, ClientPartition(histories, config["MAX_ITEM_LIST_LENGTH"], views=blocks)


@pytest.mark.parametrize("loss", ["ce", "sampled_ce"])
def test_lumos_cohort_with_views_equals_one_by_one(tiny_data, loss):
    model, config, partition = _lumos_with_views(tiny_data)
    settings = LocalSettings(local_epochs=2, optimizer="sgd", lr=0.05, loss=loss, num_negatives=16)
    trainer = LocalTrainer(model, settings)
    start = trainer.global_params()
    cohort = collate_cohort([IndexedPartition(partition)[i] for i in range(4)])
    assert cohort.views.shape == (4, 4, config["MAX_ITEM_LIST_LENGTH"])
    negatives = [trainer.draw_negatives(cohort.targets, torch.Generator().manual_seed(1)) for _ in range(2)]
    together = trainer.train_functional(start, cohort, negatives)
    for c in range(4):
        own = cohort.owner == c
        alone = trainer.train_client(start, cohort.inputs[own], cohort.targets[own], negatives, cohort.views[c : c + 1])
        for name, delta in alone.dense.items():
            torch.testing.assert_close(together[c].dense[name], delta, rtol=1e-4, atol=1e-6, msg=name)
        for name, (rows, values) in alone.sparse.items():
            assert torch.equal(together[c].sparse[name][0], rows)
            assert set(cohort.views[c].flatten().tolist()) - {0} <= set(rows.tolist())  # view rows are trained
            torch.testing.assert_close(together[c].sparse[name][1], values, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(
    "loss, sim, views",
    [("ce", "cos", ["F", "R", "C"]), ("sampled_ce", "dot", ["R", "C"]), ("sampled_ce", "cos", ["F", "C"])],
)
def test_lumos_packed_step_equals_one_by_one(tiny_data, monkeypatch, optimizer, loss, sim, views):
    """The packed path adds each client's own tri-view term: same update as training it alone."""
    from recbole_lumos.federated import packed

    monkeypatch.setattr(packed, "CHUNK_WINDOWS", 7)  # view blocks split over several chunks
    model, config, partition = _lumos_with_views(tiny_data, sim=sim, lumos_views=views)
    assert packed.supports(model)
    settings = LocalSettings(local_epochs=1, optimizer=optimizer, lr=0.05, loss=loss, num_negatives=16)
    trainer = LocalTrainer(model, settings)
    start = trainer.global_params()
    cohort = collate_cohort([IndexedPartition(partition)[i] for i in range(5)])
    negatives = [trainer.draw_negatives(cohort.targets, torch.Generator().manual_seed(1))]
    together = trainer.train_packed(start, cohort, negatives)
    # see test_packed.py on Adam's tolerance. SGD: with sim=dot the position rows sum terms of size ~1 in another
    # order (float32): 2e-6 apart on an update whose largest entry is 2.7.
    atol = 1e-2 * settings.lr if optimizer == "adam" else 1e-5
    for c in range(len(cohort)):
        own = cohort.owner == c
        alone = trainer.train_client(start, cohort.inputs[own], cohort.targets[own], negatives, cohort.views[c : c + 1])
        for name, delta in alone.dense.items():
            torch.testing.assert_close(together[c].dense[name], delta, rtol=1e-4, atol=atol, msg=name)
        for name, (rows, values) in alone.sparse.items():
            assert torch.equal(together[c].sparse[name][0], rows), name
            assert set(cohort.views[c].flatten().tolist()) - {0} <= set(rows.tolist())  # view rows are trained
            torch.testing.assert_close(together[c].sparse[name][1], values, rtol=1e-4, atol=atol, msg=name)
    args = (model, start, cohort.inputs, cohort.targets, cohort.owner, len(cohort), loss, negatives[0])
    blocks = (cohort.views, torch.arange(len(cohort)))
    with_views = packed.cohort_gradients(*args, blocks=blocks, block_losses=model.client_block_losses)
    without = packed.cohort_gradients(*args)
    assert not torch.allclose(with_views.dense["LayerNorm.weight"], without.dense["LayerNorm.weight"])


@pytest.mark.parametrize(
    "loss, counterfactuals, extra",
    [
        ("ce", 3, {"lumos_item_negatives": 6}),
        ("sampled_ce", 4, {"lumos_item_negatives": 3, "sim": "dot"}),
        ("sampled_ce", 2, {"lumos_aug_weight": 0.5, "lumos_aug_views": ["F", "R"]}),
        ("bce", 2, {"lumos_aug_weight": 0.3, "lumos_aug_views": ["F", "R"], "lumos_aug_f_targets": True}),
        ("ce", 1, {"lumos_aug_weight": 0.7, "lambda_cl": 0.0}),
        ("bce", 3, {"lumos_item_negatives": 5, "lumos_aug_weight": 0.2}),
    ],
)
def test_lumos_counterfactuals_items_and_view_windows_packed_equal_one_by_one(
    tiny_data, monkeypatch, loss, counterfactuals, extra, device
):
    """n_c counterfactual rows, item-level negatives and next-item windows on the views: the
    packed step gives every client the update it gets trained alone."""
    from recbole_lumos.federated import packed

    monkeypatch.setattr(packed, "CHUNK_WINDOWS", 7)
    model, config, partition = _lumos_with_views(tiny_data, counterfactuals, **extra)
    model.to(device)
    settings = LocalSettings(local_epochs=1, optimizer="sgd", lr=0.05, loss=loss, num_negatives=16)
    trainer = LocalTrainer(model, settings)
    assert not trainer.plain
    start = trainer.global_params()
    cohort = collate_cohort([IndexedPartition(partition)[i] for i in range(5)]).to(device)
    assert cohort.views.shape[1] == 3 + counterfactuals
    negatives = [trainer.draw_negatives(cohort.targets, torch.Generator().manual_seed(1))]
    together = trainer.train_packed(start, cohort, negatives)
    for c in range(len(cohort)):
        own = cohort.owner == c
        own_negatives = [n if n is None or n.dim() == 1 else n[own] for n in negatives]
        alone = trainer.train_client(
            start, cohort.inputs[own], cohort.targets[own], own_negatives, cohort.views[c : c + 1]
        )
        for name, delta in alone.dense.items():
            torch.testing.assert_close(together[c].dense[name], delta, rtol=1e-4, atol=1e-6, msg=name)
        for name, (rows, values) in alone.sparse.items():
            assert torch.equal(together[c].sparse[name][0], rows), name
            torch.testing.assert_close(together[c].sparse[name][1], values, rtol=1e-4, atol=1e-6, msg=name)
    plain = LocalTrainer(model, settings)
    plain.plain = True  # the same clients without any view term
    baseline = plain.train_packed(start, cohort, negatives)
    assert not torch.allclose(together[0].dense["LayerNorm.weight"], baseline[0].dense["LayerNorm.weight"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("loss, sim", [("ce", "cos"), ("sampled_ce", "dot")])
def test_cl4srec_packed_step_equals_one_by_one(tiny_data, monkeypatch, optimizer, loss, sim):
    """FedCL4SRec's packed step: each client's NT-Xent over its own augmented windows."""
    from recbole_lumos.federated import packed
    from recbole_lumos.model.cl4srec import CL4SRec

    def fixed_views(self, item_seq, item_seq_len):  # the same "augmentations" on both paths
        shifted = torch.where(item_seq > 0, (item_seq % (self.n_items - 1)) + 1, item_seq)
        return item_seq, item_seq_len, shifted, item_seq_len

    monkeypatch.setattr(CL4SRec, "augmented_views", fixed_views)
    monkeypatch.setattr(packed, "CHUNK_WINDOWS", 9)
    config = build_config(
        "CL4SRec",
        "tiny",
        overrides={"data_path": str(tiny_data), **SMALL, "MAX_ITEM_LIST_LENGTH": 5, "lambda_cl": 0.5, "sim": sim},
    )
    train_data, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = CL4SRec(config, train_data._dataset)
    assert packed.supports(model)
    partition = ClientPartition(training_histories(train_data._dataset), config["MAX_ITEM_LIST_LENGTH"])
    settings = LocalSettings(local_epochs=1, optimizer=optimizer, lr=0.05, loss=loss, num_negatives=16)
    trainer = LocalTrainer(model, settings)
    start = trainer.global_params()
    sizes = [client.inputs.size(0) for client in partition.clients]
    chosen = [i for i, n in enumerate(sizes) if n == 1][:2] + [i for i, n in enumerate(sizes) if n >= 2][:4]
    cohort = collate_cohort([IndexedPartition(partition)[i] for i in chosen])
    windows = torch.bincount(cohort.owner)
    assert (windows >= 2).any() and (windows == 1).any()  # clients with and without a contrastive term
    negatives = [trainer.draw_negatives(cohort.targets, torch.Generator().manual_seed(2))]
    together = trainer.train_packed(start, cohort, negatives)
    atol = 1e-2 * settings.lr if optimizer == "adam" else 1e-6
    for c in range(len(cohort)):
        own = cohort.owner == c
        alone = trainer.train_client(start, cohort.inputs[own], cohort.targets[own], negatives)
        for name, delta in alone.dense.items():
            torch.testing.assert_close(together[c].dense[name], delta, rtol=1e-4, atol=atol, msg=name)
        for name, (rows, values) in alone.sparse.items():
            assert torch.equal(together[c].sparse[name][0], rows), name
            torch.testing.assert_close(together[c].sparse[name][1], values, rtol=1e-4, atol=atol, msg=name)
    args = (model, start, cohort.inputs, cohort.targets, cohort.owner, len(cohort), loss, negatives[0])
    blocks = model.client_blocks(cohort.inputs, cohort.owner, len(cohort), None)
    assert sorted(blocks[1].tolist()) == (windows >= 2).nonzero().flatten().tolist()
    with_cl = packed.cohort_gradients(*args, blocks=blocks, block_losses=model.client_block_losses)
    without = packed.cohort_gradients(*args)
    assert not torch.allclose(with_cl.dense["LayerNorm.weight"], without.dense["LayerNorm.weight"])
