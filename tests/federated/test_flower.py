"""The Flower app: Flower's real ClientApp dispatch and records, over an in-process grid.

The deployment engine (SuperLink + SuperNodes) only moves these messages between
machines; here a loopback :class:`Grid` hands them to the ClientApp directly.
"""

import json

import pytest
import torch
from conftest import TINY_ENGINE
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from recbole_lumos.federated.flower import client_app, run_server
from recbole_lumos.quick_start import run_model

TINY = {
    **TINY_ENGINE,
    "local_loss": "ce",  # no sampled negatives: the two runs draw no random numbers that differ
    "client_batch": 4,
    "clients_per_round": 24,
    "federated_eval_step": 1,
    "federated_stopping_step": 100,
    "epochs": 3,
    "topk": [5],
    "valid_metric": "NDCG@5",
}


class LoopbackGrid(Grid):
    """SuperNodes in this process: node ``i + 1`` hosts partition ``i`` of ``parts``."""

    def __init__(self, run_config: dict, parts: int) -> None:
        self.contexts = {
            i + 1: Context(
                run_id=1,
                node_id=i + 1,
                node_config={"partition-id": i, "num-partitions": parts},
                state=RecordDict(),
                run_config=run_config,
            )
            for i in range(parts)
        }
        self.delivered: list[str] = []
        # What Flower's runtime sets in a ServerApp process: the run and this node (the SuperLink side).
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0

    def set_run(self, run) -> None:  # pragma: no cover - part of the interface
        pass

    @property
    def run(self):  # pragma: no cover - part of the interface
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):  # pragma: no cover - send_and_receive is used
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.delivered.append(message.metadata.message_type)
            replies.append(client_app(message, self.contexts[node]))
        return replies


@pytest.mark.parametrize("parts", [1, 3])
def test_flower_run_equals_the_in_process_engine(tiny_data, tmp_path, parts):
    overrides = {**TINY, "data_path": str(tiny_data), "checkpoint_dir": str(tmp_path)}
    in_process = run_model("FedSASRec", "tiny", overrides=overrides)
    run_config = {"model": "FedSASRec", "dataset": "tiny", "overrides": json.dumps(overrides)}
    grid = LoopbackGrid(run_config, parts)
    flower = run_server(grid, run_config)
    assert grid.delivered.count("query") == parts and grid.delivered.count("train") == 3 * parts
    assert [p["epoch"] for p in flower["valid_curve"]] == [p["epoch"] for p in in_process.valid_curve]
    for ours, theirs in zip(flower["valid_curve"], in_process.valid_curve, strict=True):
        assert ours["ndcg@5"] == pytest.approx(theirs["ndcg@5"], abs=1e-4)
    assert flower["test_result"] == pytest.approx(in_process.test_result, abs=1e-4)
    from recbole_lumos.compat import load_trusted

    reference = load_trusted(in_process.checkpoint)["state_dict"]
    for name, value in flower["state_dict"].items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5, msg=name)
    assert all(t["bytes_up_per_client"] > 0 for t in flower["traffic"])


def test_a_node_refuses_users_it_does_not_host(tiny_data):
    from flwr.app import ArrayRecord, ConfigRecord

    from recbole_lumos.federated.flower import experiment

    run_config = {
        "model": "FedSASRec",
        "dataset": "tiny",
        "overrides": json.dumps({**TINY, "data_path": str(tiny_data)}),
    }
    grid = LoopbackGrid(run_config, 2)
    _, model, _, _, _ = experiment(run_config)
    content = RecordDict(
        {
            "backbone": ArrayRecord(torch_state_dict={k: v.detach() for k, v in model.named_parameters()}),
            "config": ConfigRecord({"users": [1, 2], "round": 0}),
        }
    )
    with pytest.raises(ValueError, match="not hosted on partition 0 of 2"):  # user 1 lives on partition 1
        client_app(grid.create_message(content, "train", 1, "0"), grid.contexts[1])
