"""LUMOS: the tri-view loss by hand, its gradients, the counterfactual's role, SASRec parity."""

import math

import pytest
import torch
from conftest import TINY_ENGINE
from recbole.data import create_dataset, data_preparation

from recbole_lumos.compat import load_trusted
from recbole_lumos.config import build_config
from recbole_lumos.errors import ConfigurationError
from recbole_lumos.model.lumos import LUMOS, tri_view_loss
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
        torch.cat([h, torch.ones(1, 2)]), [torch.cat([f, torch.ones(1, 2)])], None, tau, "dot",
        valid=torch.tensor([True, True, False]),
    )
    torch.testing.assert_close(padded, no_c)


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
    config = build_config("LUMOS", "tiny", overrides={"data_path": str(tiny_data), **TINY_ENGINE, "lumos_views": ["C"]})
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
