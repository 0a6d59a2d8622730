"""The server's half of a round: refused updates never reach the aggregate."""

import logging

import torch

from recbole_lumos.federated.server_step import ServerStep
from recbole_lumos.federated.update import ClientUpdate

CONFIG = {"aggregator": "fedavg", "server_optimizer": "sgd", "server_lr": 1.0}


def test_refused_updates_are_counted_logged_and_not_aggregated(caplog):
    weight = torch.nn.Parameter(torch.zeros(3))
    server = ServerStep({"w": weight}, CONFIG)
    server.start_round(4)
    with caplog.at_level(logging.WARNING):
        assert server.add(ClientUpdate(dense={"w": torch.ones(3)}, weight=2.0), max_weight=2, client=7)
        assert not server.add(ClientUpdate(dense={"w": torch.full((3,), float("nan"))}, weight=1.0), client=8)
        assert not server.add(ClientUpdate(dense={"w": torch.ones(2)}, weight=1.0), client=9)
        assert not server.add(ClientUpdate(dense={"w": torch.ones(3) * 100}, weight=5.0), max_weight=2, client=10)
    server.apply()
    assert (server.accepted, server.refused) == (1, 3)
    torch.testing.assert_close(weight.detach(), torch.ones(3))  # only client 7's delta
    assert "round 4: refused the update of client 8: 'w' holds non-finite values" in caplog.text


def test_a_round_without_updates_leaves_the_model_and_optimiser_alone():
    weight = torch.nn.Parameter(torch.zeros(2))
    server = ServerStep({"w": weight}, {**CONFIG, "server_optimizer": "adam", "server_lr": 0.1})
    server.start_round(0)
    server.add(ClientUpdate(dense={"w": torch.ones(2)}, weight=1.0))
    server.apply()
    after_first = weight.detach().clone()
    server.start_round(1)
    server.apply()  # everybody dropped out: Adam's momentum must not move the model
    torch.testing.assert_close(weight.detach(), after_first)
