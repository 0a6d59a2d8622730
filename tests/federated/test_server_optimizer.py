"""Server update rules against hand-computed steps."""

import pytest
import torch

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.server_optimizer import apply_aggregate, build_server_optimizer


def _run(config: dict, aggregates: list[float]) -> list[float]:
    weight = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = build_server_optimizer([weight], config)
    trace = []
    for value in aggregates:
        apply_aggregate(optimizer, {"w": weight}, {"w": torch.tensor([value])})
        trace.append(float(weight))
        assert weight.grad is None
    return trace


def test_sgd_applies_server_lr_times_the_aggregate():
    assert _run({"server_optimizer": "sgd", "server_lr": 0.5}, [0.2, -0.4]) == pytest.approx([1.1, 0.9])


def test_momentum_is_fedavgm():
    # v1 = g1, v2 = 0.9 v1 + g2 with g = -aggregate; w -= lr * v.
    trace = _run({"server_optimizer": "momentum", "server_lr": 1.0, "server_momentum": 0.9}, [0.2, 0.1])
    assert trace == pytest.approx([1.2, 1.2 + 0.9 * 0.2 + 0.1])


def test_adam_is_fedadam_with_adaptivity_eps():
    lr, b1, b2, eps, delta = 0.1, 0.9, 0.99, 1e-3, 0.02
    trace = _run(
        {"server_optimizer": "adam", "server_lr": lr, "server_beta1": b1, "server_beta2": b2, "server_eps": eps},
        [delta],
    )
    m_hat = delta  # bias-corrected first moment of -g = delta
    v_hat = delta**2
    assert trace == pytest.approx([1.0 + lr * m_hat / (v_hat**0.5 + eps)])


def test_unknown_server_optimizer_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="server_optimizer"):
        build_server_optimizer([torch.nn.Parameter(torch.zeros(1))], {"server_optimizer": "yogi"})
