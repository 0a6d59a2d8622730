"""What a client uploads: the same rows on every path, averaged over the rows it sent."""

import pytest
import torch
from conftest import TINY_ENGINE
from recbole.data import create_dataset, data_preparation

from recbole_lumos.config import build_config
from recbole_lumos.data.partition import ClientPartition, IndexedPartition, collate_cohort, training_histories
from recbole_lumos.federated.aggregators import build_aggregator
from recbole_lumos.federated.local_update import LocalSettings, LocalTrainer
from recbole_lumos.federated.update import ClientUpdate

SHAPES = {"item": torch.Size([20, 2]), "w": torch.Size([2])}


def _heavy_and_light():
    rows = torch.arange(1, 20)  # 19 of 20 rows: a dense table would cost fewer bytes
    heavy = ClientUpdate(dense={"w": torch.ones(2)}, sparse={"item": (rows, torch.ones(19, 2))}, weight=1.0)
    light = ClientUpdate(
        dense={"w": torch.ones(2)}, sparse={"item": (torch.tensor([0]), torch.full((1, 2), 4.0))}, weight=1.0
    )
    return heavy, light


def test_a_row_is_averaged_over_the_clients_that_sent_it():
    """Row 0 was sent by one client only: its mean is that client's delta, however many rows
    the other client touched (an encoding that densified it would halve it)."""
    heavy, light = _heavy_and_light()
    aggregator = build_aggregator("fedavg", SHAPES, {})
    aggregator.add(heavy)
    aggregator.add(light)
    item = aggregator.result()["item"]
    torch.testing.assert_close(item[0], torch.full((2,), 4.0))
    torch.testing.assert_close(item[1:], torch.ones(19, 2))


def test_the_wire_encoding_does_not_change_the_aggregate():
    from recbole_lumos.federated.flower import record_to_updates, updates_to_record

    heavy, light = _heavy_and_light()
    received = [u for _, u in record_to_updates(updates_to_record([1, 2], [heavy, light]))]
    for name in ("fedavg", "median", "trimmed_mean"):
        sent, wire = build_aggregator(name, SHAPES, {}), build_aggregator(name, SHAPES, {})
        for update in (heavy, light):
            sent.add(update)
        for update in received:
            wire.add(update)
        expected, got = sent.result(), wire.result()
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, msg=f"{name} {key}")
    assert [u.num_bytes() for u in received] == [heavy.num_bytes(), light.num_bytes()]


# ------------------------------------------------------------ the same rows on every path
CLIENTS = 5
VARIANTS = {
    "SASRec": ("SASRec", {}),
    "CL4SRec": ("CL4SRec", {}),
    "LUMOS": ("LUMOS", {}),
    "LUMOS-noC": ("LUMOS", {"lumos_views": ["F", "R"]}),
    "LUMOS-nc2-items-aug": (
        "LUMOS",
        {
            "lumos_num_counterfactuals": 2,
            "lumos_item_negatives": 3,
            "lumos_aug_weight": 0.5,
            "lumos_aug_views": ["F", "R"],
        },
    ),
}


def _trainer_and_cohort(tiny_data, variant, loss):
    name, extra = VARIANTS[variant]
    settings = {**TINY_ENGINE, "data_path": str(tiny_data), "MAX_ITEM_LIST_LENGTH": 6, "num_negatives": 4, **extra}
    config = build_config(name, "tiny", overrides={**settings, "local_loss": loss, "local_optimizer": "sgd"})
    train_data, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = config.model_class(config, train_data._dataset)
    partition = ClientPartition(training_histories(train_data._dataset), config["MAX_ITEM_LIST_LENGTH"])
    cohort = collate_cohort([IndexedPartition(partition)[i] for i in range(CLIENTS)])
    if getattr(model, "needs_views", False):
        rows = 3 + int(config["lumos_num_counterfactuals"] or 1)
        views = torch.randint(1, model.n_items, (CLIENTS, rows, 6), generator=torch.Generator().manual_seed(1))
        views[:, :, 5:] = 0
        cohort.views = views
    return LocalTrainer(model, LocalSettings.from_config(config)), cohort


def _rows(updates):
    return [set(u.sparse["item_embedding.weight"][0].tolist()) for u in updates]


@pytest.mark.parametrize("loss", ["sampled_ce", "bce"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_path_uploads_the_same_rows(tiny_data, variant, loss):
    trainer, cohort = _trainer_and_cohort(tiny_data, variant, loss)
    start = trainer.global_params()
    generator = torch.Generator().manual_seed(2)
    negatives = [trainer.draw_negatives(cohort.targets, generator)]
    torch.manual_seed(3)
    packed = _rows(trainer.train_packed(start, cohort, negatives))
    functional = _rows(trainer.train_functional(start, cohort, negatives))
    one_by_one = []
    for c in range(CLIENTS):
        own = cohort.owner == c
        own_negatives = [n if n.dim() == 1 else n[own] for n in negatives]
        views = None if cohort.views is None else cohort.views[c : c + 1]
        alone = trainer.train_client(start, cohort.inputs[own], cohort.targets[own], own_negatives, views)
        one_by_one += _rows([alone])
    assert packed == one_by_one
    assert functional == one_by_one
