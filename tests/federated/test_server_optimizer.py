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


def _two_rounds(lazy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Round 1 sends row 1 of the item table, round 2 only row 2; the table after each round."""
    from recbole_lumos.federated.aggregators import build_aggregator
    from recbole_lumos.federated.update import ClientUpdate

    table = torch.nn.Parameter(torch.zeros(4, 2))
    params = {"item_embedding.weight": table}
    config = {"server_optimizer": "adam", "server_lr": 0.1, "server_lazy_rows": lazy}
    optimizer = build_server_optimizer(params, config)
    aggregator = build_aggregator("fedavg", {"item_embedding.weight": table.shape}, {})
    trace = []
    for row in (1, 2):
        sent = (torch.tensor([row]), torch.ones(1, 2))
        aggregator.add(ClientUpdate(dense={}, sparse={"item_embedding.weight": sent}))
        apply_aggregate(optimizer, params, aggregator.result(), aggregator.sent_rows)
        trace.append(table.detach().clone())
    return trace[0], trace[1]


def test_dense_server_adam_moves_a_row_nobody_sent():
    first, second = _two_rounds(lazy=False)
    assert not torch.equal(second[1], first[1])  # row 1 keeps moving on its stale momentum


def test_lazy_server_adam_moves_only_the_rows_sent_this_round():
    first, second = _two_rounds(lazy=True)
    torch.testing.assert_close(second[1], first[1], rtol=0, atol=0)  # row 1 was not sent in round 2
    assert first[1].abs().min() > 0 and second[2].abs().min() > 0
    torch.testing.assert_close(second[[0, 3]], torch.zeros(2, 2), rtol=0, atol=0)  # never sent, never moved
    # a row's first step is Adam's first step: lr * sign(gradient)
    torch.testing.assert_close(first[1], torch.full((2,), 0.1), rtol=1e-3, atol=1e-3)


def test_lazy_rows_state_survives_a_checkpoint():
    table = torch.nn.Parameter(torch.zeros(4, 2))
    params = {"item_embedding.weight": table, "w": torch.nn.Parameter(torch.zeros(2))}
    config = {"server_optimizer": "adam", "server_lr": 0.1, "server_lazy_rows": True}
    optimizer = build_server_optimizer(params, config)
    aggregate = {"item_embedding.weight": torch.ones(4, 2), "w": torch.ones(2)}
    apply_aggregate(optimizer, params, aggregate, {"item_embedding.weight": torch.tensor([True, False, True, False])})
    restored = build_server_optimizer(params, config)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.state_dict()["rows"]["state"][0]["step"] == 1
