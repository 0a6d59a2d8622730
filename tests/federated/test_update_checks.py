"""The server's checks on a client update: what is refused, and why."""

import pytest
import torch

from recbole_lumos.federated.update import ClientUpdate
from recbole_lumos.federated.update_checks import refusal

SHAPES = {"item_embedding.weight": torch.Size([10, 4]), "bias": torch.Size([4])}


def good() -> ClientUpdate:
    rows = torch.tensor([1, 9])
    return ClientUpdate(
        dense={"bias": torch.ones(4)}, sparse={"item_embedding.weight": (rows, torch.ones(2, 4))}, weight=3.0
    )


def test_a_well_formed_update_is_accepted():
    assert refusal(good(), SHAPES, max_weight=3) is None


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda u: u.dense["bias"].__setitem__(0, float("nan")), "non-finite"),
        (lambda u: u.dense["bias"].__setitem__(1, float("inf")), "non-finite"),
        (lambda u: u.sparse["item_embedding.weight"][1].__setitem__(0, float("nan")), "non-finite"),
        (lambda u: u.dense.__setitem__("bias", torch.ones(5)), "shape"),
        (lambda u: u.dense.__setitem__("other", torch.ones(1)), "not in the model"),
        (lambda u: u.sparse.__setitem__("item_embedding.weight", (torch.tensor([10]), torch.ones(1, 4))), "outside"),
        (lambda u: u.sparse.__setitem__("item_embedding.weight", (torch.tensor([-1]), torch.ones(1, 4))), "outside"),
        (lambda u: u.sparse.__setitem__("item_embedding.weight", (torch.tensor([1]), torch.ones(2, 4))), "row deltas"),
        (lambda u: u.sparse.__setitem__("item_embedding.weight", (torch.tensor([1.0]), torch.ones(1, 4))), "integer"),
        (lambda u: setattr(u, "weight", 0.0), "positive"),
        (lambda u: setattr(u, "weight", -2.0), "positive"),
        (lambda u: setattr(u, "weight", float("nan")), "positive"),
        (lambda u: setattr(u, "weight", 4.0), "more than the client's 3 training positions"),
    ],
)
def test_a_bad_update_is_refused_with_its_reason(corrupt, reason):
    update = good()
    corrupt(update)
    assert reason in refusal(update, SHAPES, max_weight=3)
