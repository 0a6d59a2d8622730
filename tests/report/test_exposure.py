"""ER@K on a hand-built example, and against RecBole's own Hit@K on data where the two must agree."""

from pathlib import Path

import pytest
import torch
from conftest import TINY_ENGINE

from recbole_lumos.quick_start import run_model
from recbole_lumos.report.exposure import ExposureMeter, exposure_ratio

# Four users' ranked lists (best first) over items 1..6; targets 2 and 5.
TOP = torch.tensor(
    [
        [2, 3, 1],  # u1: target 2 at position 0
        [5, 2, 1],  # u2: both targets, but u2 has interacted with 5
        [1, 3, 2],  # u3: target 2 at position 2, outside the top 2 (a K+1 harness would count it)
        [5, 4, 1],  # u4: target 5 at position 0; u4 has interacted with 2
    ]
)
TARGETS = torch.tensor([2, 5])
INTERACTED = torch.tensor([[False, False], [False, True], [False, False], [True, False]])


def test_exposure_ratio_on_a_hand_built_example():
    # target 2: eligible u1 u2 u3, exposed in the top 2: u1 u2 -> 2/3;
    # target 5: eligible u1 u3 u4, exposed: u4 -> 1/3; ER@2 = (2/3 + 1/3) / 2.
    assert exposure_ratio(TOP, TARGETS, INTERACTED, 2) == pytest.approx(0.5)
    # top 1: target 2 -> u1 (1/3); target 5 -> u4 (1/3; u2 is not eligible).
    assert exposure_ratio(TOP, TARGETS, INTERACTED, 1) == pytest.approx(1 / 3)
    # top 3 reaches u3's position 2: target 2 -> 3/3, target 5 -> 1/3.
    assert exposure_ratio(TOP, TARGETS, INTERACTED, 3) == pytest.approx((1 + 1 / 3) / 2)


def test_a_target_every_user_has_met_is_left_out_of_the_mean():
    interacted = INTERACTED.clone()
    interacted[:, 1] = True  # nobody is eligible for target 5
    assert exposure_ratio(TOP, TARGETS, interacted, 2) == pytest.approx(2 / 3)
    assert torch.isnan(torch.tensor(exposure_ratio(TOP, TARGETS, torch.ones(4, 2, dtype=torch.bool), 2)))


def test_the_meter_over_batches_of_scores_equals_the_hand_computation():
    # Scores that rank items as TOP does (item 0 is padding at -inf, as RecBole sets it).
    scores = torch.full((4, 7), -float("inf"))
    for user, items in enumerate(TOP.tolist()):
        for position, item in enumerate(items):
            scores[user, item] = 10.0 - position
        for other in set(range(1, 7)) - set(items):
            scores[user, other] = -1.0 - other
    histories = {1: torch.tensor([3, 4]), 2: torch.tensor([5, 1]), 3: torch.tensor([6]), 4: torch.tensor([2, 3])}
    meter = ExposureMeter([2, 5], [2, 1], histories, num_users=5)
    meter.add(torch.tensor([1, 2]), scores[:2])
    meter.add(torch.tensor([3, 4]), scores[2:])
    assert meter.result() == pytest.approx({"er@1": 1 / 3, "er@2": 0.5})
    meter.reset()
    assert set(meter.result()) == {"er@1", "er@2"}  # nothing counted: NaN


def write_shared_test_item_dataset(root: Path, name: str = "shared", n_users: int = 30, n_items: int = 20) -> Path:
    """Every user's test item is the same item ``T``, which appears nowhere else."""
    import random

    rng = random.Random(5)
    folder = root / name
    folder.mkdir(parents=True)
    rows = []
    for user in range(1, n_users + 1):
        sequence = [f"i{rng.randint(1, n_items)}" for _ in range(rng.randint(5, 9))] + ["T"]
        rows += [f"u{user}\t{item}\t{1_000_000 + user * 100 + step}" for step, item in enumerate(sequence)]
    (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(rows) + "\n")
    return root


def test_er_at_k_of_the_common_test_item_equals_recbole_hit_at_k(tmp_path):
    """When every user's test item is the one target, ER@K counts exactly what RecBole's Hit@K counts:
    the same scores, the same top K (K positions, not K + 1)."""
    data = write_shared_test_item_dataset(tmp_path / "data")
    result = run_model(
        "FedSASRec",
        "shared",
        overrides={
            **TINY_ENGINE,
            "data_path": str(data),
            "epochs": 2,
            "client_batch": 8,
            "num_negatives": 8,
            "target_items": ["T"],
            "topk": [1, 3, 10],
            "valid_metric": "NDCG@10",
        },
    )
    test = result.test_result
    assert result.attack["target_items"] == ["T"] and result.attack["malicious_clients"] == 0
    assert 0 < test["hit@10"] < 1  # a non-trivial check
    for k in (1, 3, 10):
        assert test[f"er@{k}"] == pytest.approx(test[f"hit@{k}"], abs=1e-4)  # RecBole rounds to 4 places
