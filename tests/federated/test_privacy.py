"""Local DP on the client: clipping, Gaussian noise, and always-dense uploads."""

from __future__ import annotations

import math

import pytest
import torch

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.privacy import clip_update, privatize, update_norm
from recbole_lumos.federated.update import ClientUpdate

SHAPES = {"bias": torch.Size([2]), "item": torch.Size([4, 2])}


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Cheap stand-in for torch.testing.assert_close, whose first call costs ~0.7 s of imports."""
    assert actual.shape == expected.shape and torch.allclose(actual, expected, atol=1e-6), (actual, expected)


def sample(weight: float = 7.0) -> ClientUpdate:
    """Norm 5: bias [3, 0] and item row 1 = [0, 4], sent sparsely."""
    return ClientUpdate(
        dense={"bias": torch.tensor([3.0, 0.0])},
        sparse={"item": (torch.tensor([1]), torch.tensor([[0.0, 4.0]]))},
        weight=weight,
    )


def test_clip_update_scales_globally_and_keeps_sparse() -> None:
    update = sample()
    clipped = clip_update(update, 1.0)
    assert update_norm(clipped) == pytest.approx(1.0)
    assert_close(clipped.dense["bias"], torch.tensor([0.6, 0.0]))
    index, rows = clipped.sparse["item"]
    assert index.tolist() == [1]
    assert_close(rows, torch.tensor([[0.0, 0.8]]))
    assert update_norm(update) == pytest.approx(5.0)  # input untouched
    assert update_norm(clip_update(update, 10.0)) == pytest.approx(5.0)  # under the bound: unchanged


def test_privatize_clips_and_uploads_dense() -> None:
    out = privatize(sample(), clip=1.0, noise_multiplier=0.0, shapes=SHAPES)
    assert out.sparse == {}
    assert set(out.dense) == set(SHAPES)
    assert update_norm(out) <= 1.0 + 1e-6
    assert out.weight == 7.0


def test_privatize_without_noise_and_large_clip_is_identity_but_dense() -> None:
    update = ClientUpdate(dense={}, sparse={"item": (torch.tensor([0, 3]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))})
    out = privatize(update, clip=100.0, noise_multiplier=0.0, shapes=SHAPES)
    assert out.sparse == {}
    assert_close(out.dense["item"], update.to_dense(SHAPES)["item"])
    assert_close(out.dense["bias"], torch.zeros(2))  # unsent parameter is uploaded as zeros


def test_noise_std_is_multiplier_times_clip() -> None:
    shapes = {"w": torch.Size([200, 100])}
    zero = ClientUpdate(dense={"w": torch.zeros(200, 100)})
    generator = torch.Generator().manual_seed(0)
    noise = privatize(zero, clip=2.0, noise_multiplier=0.5, shapes=shapes, generator=generator).dense["w"]
    # 20,000 draws: the sample std is within ~0.5% of 1.0 (std error 1/sqrt(2N)).
    assert float(noise.std()) == pytest.approx(1.0, rel=0.03)
    assert abs(float(noise.mean())) < 0.03


def test_seeded_noise_is_reproducible() -> None:
    def noisy(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return privatize(sample(), 1.0, 1.0, SHAPES, generator=generator).dense["item"]

    assert_close(noisy(3), noisy(3))
    assert not torch.equal(noisy(3), noisy(4))


def test_bad_privacy_parameters_raise() -> None:
    with pytest.raises(ConfigurationError, match="clipping norm"):
        privatize(sample(), clip=0.0, noise_multiplier=1.0, shapes=SHAPES)
    with pytest.raises(ConfigurationError, match="noise multiplier"):
        privatize(sample(), clip=1.0, noise_multiplier=-1.0, shapes=SHAPES)
    with pytest.raises(ValueError):
        clip_update(sample(), math.nan)


def meta_update() -> ClientUpdate:
    """``sample()`` on the meta device: a stand-in for a CUDA update on a CPU-only machine."""
    return ClientUpdate(
        dense={"bias": torch.empty(2, device="meta")},
        sparse={"item": (torch.tensor([1], device="meta"), torch.empty(1, 2, device="meta"))},
        weight=7.0,
    )


@pytest.fixture
def strict_generator_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.randn`` refuses a generator of another device, as CUDA does (CPU and meta do not check)."""
    randn = torch.randn

    def checked(*args, generator: torch.Generator | None = None, device=None, **kwargs):
        if generator is not None and device is not None and torch.device(device) != generator.device:
            raise RuntimeError(f"Expected a '{torch.device(device).type}' device type for generator but found "
                               f"'{generator.device.type}'")
        return randn(*args, generator=generator, device=device, **kwargs)

    monkeypatch.setattr(torch, "randn", checked)


def test_privatize_keeps_every_tensor_on_the_update_device(strict_generator_device) -> None:
    """A CPU generator noising a non-CPU update: zeros, clipping and noise all stay on its device."""
    generator = torch.Generator().manual_seed(0)
    shapes = {**SHAPES, "unsent": torch.Size([3])}
    out = privatize(meta_update(), clip=1.0, noise_multiplier=1.0, shapes=shapes, generator=generator)
    assert set(out.dense) == set(shapes) and out.sparse == {}
    assert {name: t.device.type for name, t in out.dense.items()} == dict.fromkeys(shapes, "meta")
    assert all(out.dense[name].shape == shape for name, shape in shapes.items())
    clipped = clip_update(meta_update(), 1.0)
    assert clipped.dense["bias"].device.type == "meta" and clipped.sparse["item"][1].device.type == "meta"


def test_privatize_creates_nothing_on_the_default_device() -> None:
    """With another default device, unsent parameters are still zeros beside the (CPU) update."""
    generator, update = torch.Generator().manual_seed(0), sample()
    shapes = {**SHAPES, "unsent": torch.Size([3])}
    with torch.device("meta"):
        out = privatize(update, clip=1.0, noise_multiplier=0.5, shapes=shapes, generator=generator)
        plain = privatize(ClientUpdate(dense={}, sparse={}), 1.0, 0.0, SHAPES)  # nothing sent: default device
    assert {t.device.type for t in out.dense.values()} == {"cpu"}
    assert {t.device.type for t in plain.dense.values()} == {"meta"}


def test_noise_is_the_generator_stream_in_shapes_order() -> None:
    """Drawn on the generator's device: a seed gives the same noise wherever the update lives."""
    zero = ClientUpdate(dense={"bias": torch.zeros(2)})
    out = privatize(zero, clip=1.0, noise_multiplier=1.0, shapes=SHAPES, generator=torch.Generator().manual_seed(5))
    expected = torch.Generator().manual_seed(5)
    assert torch.equal(out.dense["bias"], torch.randn(2, generator=expected))
    assert torch.equal(out.dense["item"], torch.randn(4, 2, generator=expected))


def test_clipping_on_the_device_matches_the_python_float_scale() -> None:
    """Same to the bit as ``tensor * min(1, max_norm / norm)`` with the norm summed in float64."""
    generator = torch.Generator().manual_seed(1)
    update = ClientUpdate(
        dense={"bias": torch.randn(7, generator=generator)},
        sparse={"item": (torch.tensor([0, 2]), torch.randn(2, 5, generator=generator))},
    )
    norm = math.sqrt(sum(float(t.double().square().sum()) for t in (update.dense["bias"], update.sparse["item"][1])))
    clipped = clip_update(update, 0.5)
    assert update_norm(update) == norm
    assert torch.equal(clipped.dense["bias"], update.dense["bias"] * (0.5 / norm))
    assert torch.equal(clipped.sparse["item"][1], update.sparse["item"][1] * (0.5 / norm))
