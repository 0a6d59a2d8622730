"""The Flower app: Flower's real ClientApp dispatch and records, over an in-process grid.

The deployment engine (SuperLink + SuperNodes) only moves these messages between
machines; here a loopback :class:`Grid` hands them to the ClientApp directly.
"""

import json

import pytest
import torch
from conftest import TINY_ENGINE
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
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
        self.pending: dict[str, Message] = {}
        self.down: set[int] = set()
        """Nodes the SuperLink has lost: it answers their messages with "Node Unavailable"."""
        self.lost: dict[tuple[int, str], Error] = {}
        """``(node, round) -> the error reply`` its train message gets instead of an answer."""
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

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id  # what Flower's grid does
            self.pending[message.metadata.message_id] = message
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        """Each call answers one pending message, the last pushed first (replies arrive out of order)."""
        waiting = [i for i in message_ids if i in self.pending]
        if not waiting:
            return []
        message = self.pending.pop(waiting[-1])
        node = message.metadata.dst_node_id
        if node in self.down:  # what Flower 1.42's SuperLink replies for a node without heartbeat
            return [Message(Error(ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable"), reply_to=message)]
        lost = self.lost.get((node, message.metadata.group_id)) if message.metadata.message_type == "train" else None
        if lost is not None:
            return [Message(lost, reply_to=message)]
        self.delivered.append(message.metadata.message_type)
        try:
            return [client_app(message, self.contexts[node])]
        except Exception as error:  # what Flower's runtime replies when a ClientApp raises
            return [Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, repr(error)), reply_to=message)]

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - push/pull are used
        raise NotImplementedError


@pytest.mark.parametrize("parts", [1, 3])
def test_flower_run_equals_the_in_process_engine(tiny_data, tmp_path, parts):
    overrides = {**TINY, "data_path": str(tiny_data), "checkpoint_dir": str(tmp_path)}
    in_process = run_model("FedSASRec", "tiny", overrides=overrides)
    run_config = {"model": "FedSASRec", "dataset": "tiny", "overrides": json.dumps(overrides)}
    grid = LoopbackGrid(run_config, parts)
    flower = run_server(grid, run_config)
    assert grid.delivered.count("query") == parts and grid.delivered.count("train") == 3 * parts
    assert len(list((tmp_path / "flower-node-cache").glob("node-*.pt"))) == parts  # each node cached its data
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


def best_and_stop(curve: list[float], bigger: bool, patience: int) -> tuple[int, int]:
    """``(best round, rounds run)`` of early stopping with a validation every round."""
    best, best_round, waited = None, -1, 0
    for round_index, value in enumerate(curve):
        if best is None or (value > best if bigger else value < best):
            best, best_round, waited = value, round_index, 0
        else:
            waited += 1
            if waited >= patience:
                break
    return best_round, round_index + 1


def test_flower_early_stopping_follows_the_metric_direction(tiny_data, tmp_path, monkeypatch):
    """Smaller is better (``valid_metric_bigger: False``): the best round is the lowest value,
    and the run stops after ``federated_stopping_step`` validations that do not go down.

    RecBole sets ``valid_metric_bigger`` from the metric's name (False for GiniIndex,
    AveragePopularity, ...), but RecBole 1.2.1 cannot evaluate those ranking metrics
    (``Collector.get_data_struct`` calls ``.cpu()`` on an int), so the test flips the flag on
    the run's config: NDCG@5 rises on this data, so the two directions disagree."""
    from recbole_lumos.federated.flower import experiment

    overrides = {
        **TINY,
        "data_path": str(tiny_data),
        "checkpoint_dir": str(tmp_path),
        "federated_stopping_step": 1,
        "epochs": 5,
    }
    run_config = {"model": "FedSASRec", "dataset": "tiny", "overrides": json.dumps(overrides)}
    config = experiment(run_config)[0]  # the ServerApp's config (built once per process)
    monkeypatch.setitem(config.final_config_dict, "valid_metric_bigger", False)
    flower = run_server(LoopbackGrid(run_config, 2), run_config)
    curve = [p["ndcg@5"] for p in flower["valid_curve"]]
    assert len(curve) == flower["rounds"]
    assert (flower["best_round"], flower["rounds"]) == best_and_stop(curve, bigger=False, patience=1)
    assert flower["best_valid_result"]["ndcg@5"] == pytest.approx(curve[flower["best_round"]], abs=1e-4)
    assert best_and_stop(curve, bigger=False, patience=1) != best_and_stop(curve, bigger=True, patience=1)


def _same_node_data(a, b) -> None:
    assert type(a.model) is type(b.model)
    for (name, x), (other, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert name == other
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
    assert a.partition.max_len == b.partition.max_len and a.partition.skipped_users == b.partition.skipped_users
    assert len(a.partition) == len(b.partition)
    for x, y in zip(a.partition.clients, b.partition.clients, strict=True):
        assert x.user == y.user
        for field in ("history", "inputs", "targets", "views"):
            left, right = getattr(x, field), getattr(y, field)
            assert (left is None) == (right is None), field
            if left is not None:
                assert torch.equal(left, right), field


def test_a_node_caches_its_data_and_rebuilds_a_bad_cache(tiny_data, tmp_path, monkeypatch):
    """Flower starts a fresh ClientApp process per message: the node's prepared data (model
    skeleton and its shard of clients) comes from a checksummed file keyed by everything it
    depends on; a corrupt, truncated or stale file is rebuilt, never used."""
    import os

    from recbole_lumos.data.partition import ClientPartition, training_histories
    from recbole_lumos.federated import flower

    overrides = {**TINY, "data_path": str(tiny_data), "checkpoint_dir": str(tmp_path / "saved")}
    run_config = {"model": "FedSASRec", "dataset": "tiny", "overrides": json.dumps(overrides)}
    folder = tmp_path / "saved" / "flower-node-cache"

    def load():
        return flower.load_node_data(run_config, flower.node_config(run_config), 1, 2)

    built, source = load()
    assert source == "built"
    (path,) = folder.glob("node-1of2-*.pt")
    # The shard: users u % 2 == 1, with the same clients as the whole partition has for them.
    _, _, train_data, _, _ = flower.experiment(run_config)
    everyone = ClientPartition(training_histories(train_data._dataset), TINY["MAX_ITEM_LIST_LENGTH"])
    assert [c.user for c in built.partition.clients] == [c.user for c in everyone.clients if c.user % 2 == 1]

    def no_build(*args):
        raise AssertionError("rebuilt although the cache is valid")

    with monkeypatch.context() as patch:  # a second process: the data comes from the file alone
        patch.setattr(flower, "build_node_data", no_build)
        cached, source = load()
    assert source == "cache"
    _same_node_data(built, cached)

    raw = path.read_bytes()
    for bad in (raw[: len(raw) // 2], raw[:-20] + bytes(b ^ 0xFF for b in raw[-20:]), b"not a cache"):
        path.write_bytes(bad)
        again, source = load()
        assert source == "built"
        _same_node_data(built, again)
        assert load()[1] == "cache"  # the rebuilt file is good

    with pytest.raises(ValueError, match="another format or key"):
        flower.read_node_data(path, "0" * 64)

    inter = tiny_data / "tiny" / "tiny.inter"  # the data changed on disk: a new key, so rebuilt
    stat = inter.stat()
    os.utime(inter, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load()[1] == "built"
    assert len(list(folder.glob("node-1of2-*.pt"))) == 2

    off = {**run_config, "node-cache": "off"}
    data, source = flower.load_node_data(off, flower.node_config(off), 0, 2)
    assert source == "built, no cache" and not list(folder.glob("node-0of2-*"))
    assert all(c.user % 2 == 0 for c in data.partition.clients)


UNAVAILABLE = Error(ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable")
RAISED = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "RuntimeError('out of memory')")


def _flower_config(tiny_data, tmp_path, **extra) -> dict:
    overrides = {**TINY, "data_path": str(tiny_data), "checkpoint_dir": str(tmp_path)}
    return {"model": "FedSASRec", "dataset": "tiny", "overrides": json.dumps(overrides), **extra}


def test_a_lost_node_is_counted_and_the_round_aggregates_the_others(tiny_data, tmp_path):
    run_config = _flower_config(tiny_data, tmp_path, **{"min-replies": 2})
    grid = LoopbackGrid(run_config, 3)
    grid.lost = {(2, "1"): UNAVAILABLE, (3, "2"): RAISED}  # node 2 in round 1, node 3's ClientApp in round 2
    flower = run_server(grid, run_config)
    assert flower["rounds"] == 3
    assert [(n["round"], n["node"], n["partition"]) for n in flower["lost_nodes"]] == [(1, 2, 1), (2, 3, 2)]
    assert "Node Unavailable" in flower["lost_nodes"][0]["reason"]
    assert "out of memory" in flower["lost_nodes"][1]["reason"]
    assert [t["lost_nodes"] for t in flower["traffic"]] == [0, 1, 1]

    stricter = _flower_config(tiny_data, tmp_path / "strict", **{"min-replies": 3})
    grid = LoopbackGrid(stricter, 3)
    grid.lost = {(2, "1"): UNAVAILABLE}
    with pytest.raises(RuntimeError, match="round 1: 2 of 3 nodes answered, fewer than the 3 needed"):
        run_server(grid, stricter)


def test_the_server_refuses_a_bad_update_from_the_wire(tiny_data, tmp_path, monkeypatch):
    """Updates decoded from a node's reply go through the same checks as in-process ones."""
    from recbole_lumos.federated import flower

    encode = flower.updates_to_record

    def corrupt(users, updates):
        name = next(iter(updates[0].dense))
        updates[0].dense[name] = torch.full_like(updates[0].dense[name], float("nan"))  # NaN
        if len(updates) > 1 and updates[1].sparse:
            rows, values = next(iter(updates[1].sparse.values()))
            rows[0] = 10**6  # a row past the item table
        if len(updates) > 2:
            updates[2].dense["item_embedding.weight"] = torch.zeros(3)  # the wrong shape
        return encode(users, updates)

    monkeypatch.setattr(flower, "updates_to_record", corrupt)
    run_config = _flower_config(tiny_data, tmp_path)
    overrides = {**json.loads(run_config["overrides"]), "local_loss": "sampled_ce", "num_negatives": 8, "epochs": 1}
    run_config["overrides"] = json.dumps(overrides)
    result = run_server(LoopbackGrid(run_config, 2), run_config)
    assert result["refused_updates"] == 6  # three in each node's reply
    assert all(torch.isfinite(v).all() for v in result["state_dict"].values())


def test_a_restarted_server_resumes_and_ends_where_an_uninterrupted_run_ends(tiny_data, tmp_path):
    overrides = {"server_optimizer": "adam", "server_lr": 0.01, "epochs": 4}  # Adam's moments must survive
    straight_config = _flower_config(tiny_data, tmp_path / "a", **{"min-replies": 2})
    straight_config["overrides"] = json.dumps({**json.loads(straight_config["overrides"]), **overrides})
    straight = run_server(LoopbackGrid(straight_config, 2), straight_config)

    run_config = _flower_config(tiny_data, tmp_path / "b", **{"min-replies": 2})
    run_config["overrides"] = straight_config["overrides"].replace(str(tmp_path / "a"), str(tmp_path / "b"))
    grid = LoopbackGrid(run_config, 2)
    grid.lost = {(1, "2"): UNAVAILABLE}  # round 2 cannot be aggregated: the server stops
    with pytest.raises(RuntimeError, match="round 2"):
        run_server(grid, run_config)
    (checkpoint,) = (tmp_path / "b").glob("FedSASRec-tiny-*/flower-server.pt")
    assert torch.load(checkpoint, weights_only=True)["progress"]["next_round"] == 2
    resumed_grid = LoopbackGrid(run_config, 2)
    resumed = run_server(resumed_grid, run_config)
    assert resumed["resumed"] and not straight["resumed"]
    assert resumed_grid.delivered.count("train") == 2 * 2  # rounds 2 and 3 only
    assert resumed["rounds"] == straight["rounds"] == 4
    assert resumed["valid_curve"] == straight["valid_curve"]
    assert resumed["best_valid_result"] == straight["best_valid_result"]
    assert resumed["test_result"] == straight["test_result"]
    for name, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, rtol=0, atol=0, msg=name)


def test_flower_equals_the_in_process_engine_with_dropout_and_sampled_negatives(tiny_data, tmp_path):
    """The same seeding rule: the same clients answer, and each cohort draws the same negatives
    although its members train on different nodes."""
    overrides = {
        **TINY,
        "data_path": str(tiny_data),
        "checkpoint_dir": str(tmp_path),
        "local_loss": "sampled_ce",
        "num_negatives": 8,
        "client_dropout": 0.25,
    }
    in_process = run_model("FedSASRec", "tiny", overrides=overrides)
    run_config = {"model": "FedSASRec", "dataset": "tiny", "overrides": json.dumps(overrides)}
    run_config["server-checkpoint"] = "off"
    flower = run_server(LoopbackGrid(run_config, 3), run_config)
    assert flower["dropped_clients"] == in_process.dropped_clients == 3 * 6
    assert [t["clients"] for t in flower["traffic"]] == [t["clients"] for t in in_process.traffic] == [18] * 3
    for ours, theirs in zip(flower["valid_curve"], in_process.valid_curve, strict=True):
        assert ours["ndcg@5"] == pytest.approx(theirs["ndcg@5"], abs=1e-4)
    from recbole_lumos.compat import load_trusted

    reference = load_trusted(in_process.checkpoint)["state_dict"]
    for name, value in flower["state_dict"].items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5, msg=name)
