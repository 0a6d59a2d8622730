"""LUMOS: the tri-view loss by hand, its gradients, the counterfactual's role, SASRec parity."""

import math

import pytest
import torch
from conftest import TINY_ENGINE
from recbole.data import create_dataset, data_preparation

from recbole_lumos.compat import load_trusted
from recbole_lumos.config import build_config
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.model.lumos import LUMOS, first_distinct, new_items, tri_view_loss
from recbole_lumos.quick_start import run_model


def test_tri_view_loss_matches_hand_computation():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    r = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    c = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    tau, w_c = 0.5, 0.25

    def nce(a: int, positive: torch.Tensor) -> float:
        pos = math.exp(float(h[a] @ positive[a]) / tau)
        others = sum(math.exp(float(h[a] @ h[b]) / tau) for b in range(2) if b != a)
        hard = w_c * sum(math.exp(float(h[a] @ c[k]) / tau) for k in range(2))
        return -math.log(pos / (pos + others + hard))

    expected = 0.5 * (sum(nce(a, f) for a in range(2)) / 2 + sum(nce(a, r) for a in range(2)) / 2)
    assert tri_view_loss(h, [f, r], c, tau, "dot", w_c).item() == pytest.approx(expected, rel=1e-6)
    # Without C the hard-negative terms vanish; a padded (invalid) user changes nothing.
    no_c = tri_view_loss(h, [f], None, tau, "dot")
    padded = tri_view_loss(
        torch.cat([h, torch.ones(1, 2)]),
        [torch.cat([f, torch.ones(1, 2)])],
        None,
        tau,
        "dot",
        valid=torch.tensor([True, True, False]),
    )
    torch.testing.assert_close(padded, no_c)


def test_several_counterfactuals_and_item_negatives_by_hand():
    """n_c counterfactuals per user and item-level negatives each add their terms to the denominator."""
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    c = torch.tensor([[[-1.0, 0.0], [0.5, -1.0]], [[1.0, 0.0], [0.0, -1.0]]])  # [U, n_c, d]
    items = torch.tensor([[[0.0, 3.0], [1.0, 1.0], [9.0, 9.0]], [[2.0, 0.0], [0.0, 0.0], [5.0, 5.0]]])
    item_valid = torch.tensor([[True, True, False], [True, False, False]])
    tau, w_c = 0.5, 0.25

    def nce(a: int) -> float:
        pos = math.exp(float(h[a] @ f[a]) / tau)
        others = sum(math.exp(float(h[a] @ h[b]) / tau) for b in range(2) if b != a)
        hard = w_c * sum(math.exp(float(h[a] @ c[u, k]) / tau) for u in range(2) for k in range(2))
        own = w_c * sum(math.exp(float(h[a] @ items[a, j]) / tau) for j in range(3) if item_valid[a, j])
        return -math.log(pos / (pos + others + hard + own))

    expected = (nce(0) + nce(1)) / 2
    loss = tri_view_loss(h, [f], c, tau, "dot", w_c, item_negatives=items, item_valid=item_valid)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_item_negatives_are_the_first_new_items_of_the_counterfactuals():
    anchor = torch.tensor([[4, 5, 6, 0]])
    rows = torch.tensor([[[4, 9, 6, 0], [7, 5, 9, 8]]])  # two counterfactuals of one user
    brought = new_items(rows, anchor)
    assert brought.tolist() == [[[0, 9, 0, 0], [7, 0, 9, 8]]]
    assert first_distinct(brought.reshape(1, -1), 4).tolist() == [[9, 7, 8, 0]]
    assert first_distinct(brought.reshape(1, -1), 2).tolist() == [[9, 7]]


def test_view_windows_mask_inferred_f_targets_unless_asked(lumos_model):
    model, _ = lumos_model(lumos_aug_weight=0.5, lumos_aug_views=["F", "R"])
    anchor = torch.tensor([3, 4, 5, 6, 0, 0])
    f = torch.tensor([5, 6, 11, 12, 0, 0])  # history part 5, 6 then inferred 11, 12
    r = torch.tensor([3, 9, 5, 6, 0, 0])
    views = torch.stack([anchor, f, r, anchor]).unsqueeze(0)
    windows = model.augmented_windows(views)
    assert windows.inputs.tolist() == [[5, 6, 11, 12, 0], [3, 9, 5, 6, 0]]
    assert windows.targets.tolist() == [[6, 0, 0, 0, 0], [9, 5, 6, 0, 0]]
    model.aug_f_targets = True
    assert model.augmented_windows(views).targets[0].tolist() == [6, 11, 12, 0, 0]
    without_views = model.augmented_windows(torch.zeros_like(views))
    assert int(without_views.targets.count_nonzero()) == 0


def test_view_terms_need_views_and_change_the_loss(lumos_model):
    model, views = lumos_model(lambda_cl=0.0, lumos_aug_weight=0.5)
    assert model.needs_views and not model.plain_next_item_loss and not model.lone_client_term_vanishes
    inputs, targets = views[:, 0, :-1], views[:, 0, 1:]
    model.eval()
    with_aug = model.all_positions_loss(inputs, targets, views=views)
    model.aug_weight = 0.0
    assert not torch.isclose(with_aug, model.all_positions_loss(inputs, targets, views=views))
    with pytest.raises(ConfigurationError, match="lumos_aug_views"):
        lumos_model(lumos_aug_weight=0.5, lumos_aug_views=["C"])
    with pytest.raises(ConfigurationError, match="lumos_item_negatives"):
        lumos_model(lumos_item_negatives=-1)


@pytest.fixture
def lumos_model(tiny_data):
    def build(**overrides) -> tuple[LUMOS, torch.Tensor]:
        config = build_config("LUMOS", "tiny", overrides={"data_path": str(tiny_data), **TINY_ENGINE, **overrides})
        train_data, _, _ = data_preparation(config, create_dataset(config))
        torch.manual_seed(0)
        model = LUMOS(config, train_data._dataset)
        generator = torch.Generator().manual_seed(1)
        views = torch.randint(1, model.n_items, (6, 4, 8), generator=generator)
        views[:, :, 6:] = 0  # right padding
        return model, views

    return build


def test_gradients_reach_every_encoder_parameter(lumos_model):
    model, views = lumos_model()
    inputs = views[:, 0]
    targets = torch.roll(inputs, -1, 1) * (inputs > 0)
    model.all_positions_loss(inputs, targets, views=views).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    model.zero_grad()
    model.contrastive_loss(views).backward()  # the tri-view term alone also reaches every layer
    untouched = [n for n, p in model.named_parameters() if n != "item_embedding.weight" and p.grad is None]
    assert untouched == []


def test_counterfactual_is_pushed_away_more_as_w_c_grows(lumos_model):
    def similarity_after_training(w_c: float) -> float:
        model, views = lumos_model(w_c=w_c, sim="cos", tau=0.5)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(30):
            optimizer.zero_grad()
            model.contrastive_loss(views).backward()
            optimizer.step()
        with torch.no_grad():
            z = model.encode_views(views)
            return float(torch.nn.functional.cosine_similarity(z[:, 0], z[:, 3]).mean())

    assert similarity_after_training(5.0) < similarity_after_training(0.0) - 0.05


def test_views_without_a_positive_are_refused(tiny_data):
    overrides = {"data_path": str(tiny_data), **TINY_ENGINE}
    with pytest.raises(ConfigurationError, match="holding F or R"):  # the config check, before any data loads
        build_config("LUMOS", "tiny", overrides={**overrides, "lumos_views": ["C"]})
    config = build_config("LUMOS", "tiny", overrides=overrides)
    config["lumos_views"] = ["C"]  # a config changed by hand still meets the model's own check
    train_data, _, _ = data_preparation(config, create_dataset(config))
    with pytest.raises(ConfigurationError, match="positive view"):
        LUMOS(config, train_data._dataset)


@pytest.mark.parametrize("federated", [False, True])
def test_lambda_zero_trains_exactly_like_sasrec(tiny_data, tmp_path, federated):
    settings = {**TINY_ENGINE, "data_path": str(tiny_data), "epochs": 2, "seed": 5, "train_mode": "all_positions"}
    settings |= {"federated": federated, "user_batch_size": 8, "client_batch": 8, "num_negatives": 8}
    sasrec = run_model("SASRec", "tiny", overrides={**settings, "checkpoint_dir": str(tmp_path / "s")})
    lumos = run_model("LUMOS", "tiny", overrides={**settings, "lambda_cl": 0.0, "checkpoint_dir": str(tmp_path / "l")})
    assert lumos.test_result == sasrec.test_result
    lumos_params = load_trusted(lumos.checkpoint)["state_dict"]
    for name, value in load_trusted(sasrec.checkpoint)["state_dict"].items():
        torch.testing.assert_close(lumos_params[name], value, rtol=0, atol=0)


def test_view_lists_typed_on_the_command_line_are_read_as_lists():
    """``--lumos_aug_views=[F,R]`` reaches the config as the string "[F,R]" (RecBole cannot eval it)."""
    from recbole_lumos.model.lumos import _view_names

    assert _view_names("[F,R]", "lumos_aug_views", ("F", "R")) == ("F", "R")
    assert _view_names("['R', 'F']", "lumos_aug_views", ("F", "R")) == ("F", "R")
    assert _view_names("R", "lumos_aug_views", ("F", "R")) == ("R",)
    with pytest.raises(ConfigurationError, match="lumos_aug_views"):
        _view_names("[F,X]", "lumos_aug_views", ("F", "R"))
