"""More than one machine: a Flower app around the same local update and aggregation.

Flower's deployment engine (SuperLink + SuperNodes over gRPC, ``flwr run``) carries the
messages; everything that decides the numbers is this package's own code, so a Flower
run and an in-process run of the same config agree (tested):

* **SuperNode** = one machine (or device) hosting a shard of the users: user ``u``
  lives on the node whose ``node_config`` has ``partition-id = u % num-partitions``.
  Its :data:`client_app` trains the users it is asked to with
  :meth:`LocalTrainer.cohort_updates` (packed cohorts of ``client_batch``), applies
  local DP when configured, and sends back each user's update: parameter deltas only.
* **ServerApp** (:data:`server_app`): each round draws the users exactly as the
  in-process engine does (:class:`RoundSampler`, seeded by ``(seed, round)``), sends
  every node the global backbone and its share of the users, folds the updates into
  the configured aggregator and server optimiser, validates with RecBole's evaluator
  every ``federated_eval_step`` rounds with early stopping, and tests the best state.

Flower is an optional extra (``pip install -e ".[flower]"``); its Ray simulation extra
conflicts with RecBole's ray pin and is not used. See the README for the commands.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from recbole_lumos.data.partition import ClientPartition, RoundSampler, collate_cohort, training_histories
from recbole_lumos.federated.aggregators import build_aggregator
from recbole_lumos.federated.local_update import LocalSettings, LocalTrainer
from recbole_lumos.federated.privacy import privatize
from recbole_lumos.federated.server_optimizer import apply_aggregate, build_server_optimizer
from recbole_lumos.federated.update import ClientUpdate


# ------------------------------------------------------------------ shared setup
def run_settings(run_config: Mapping[str, Any]) -> tuple[str, str, list[str], dict[str, Any]]:
    """``(model, dataset, config_files, overrides)`` from a Flower run config.

    Keys: ``model``, ``dataset``, ``config-files`` (comma separated) and ``overrides``
    (a JSON object of RecBole/recbole-lumos keys, e.g. ``{"data_path": "..", "epochs": 50}``).
    """
    files = [f for f in str(run_config.get("config-files", "")).split(",") if f.strip()]
    overrides = json.loads(str(run_config.get("overrides", "{}")) or "{}")
    return str(run_config.get("model", "FedSASRec")), str(run_config["dataset"]), files, overrides


@cache
def _experiment(model_name: str, dataset: str, config_files: tuple[str, ...], overrides_json: str):
    """Config, RecBole data and a fresh model, built once per process (per SuperNode)."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_lumos.config import build_config

    config = build_config(model_name, dataset, config_files, {**json.loads(overrides_json), "federated": True})
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, data)
    init_seed(config["seed"], config["reproducibility"])
    model = config.model_class(config, train_data._dataset)
    return config, model, train_data, valid_data, test_data


def experiment(run_config: Mapping[str, Any]):
    model, dataset, files, overrides = run_settings(run_config)
    return _experiment(model, dataset, tuple(files), json.dumps(overrides, sort_keys=True))


def updates_to_record(users: list[int], updates: list[ClientUpdate]) -> ArrayRecord:
    """Several users' updates as a few Flower arrays (one object per array crosses the wire,
    so per-user arrays would be thousands): per parameter, the dense deltas stacked over the
    users that sent it dense, and the sparse rows/values concatenated with per-user counts."""
    arrays: dict[str, torch.Tensor] = {
        "users": torch.tensor(users, dtype=torch.long),
        "weights": torch.tensor([u.weight for u in updates], dtype=torch.float64),
    }
    for name in sorted({n for u in updates for n in [*u.dense, *u.sparse]}):
        owners = [i for i, u in enumerate(updates) if name in u.dense]
        if owners:
            arrays[f"dense::{name}"] = torch.stack([updates[i].dense[name] for i in owners])
            arrays[f"dense_users::{name}"] = torch.tensor(owners, dtype=torch.long)
        owners = [i for i, u in enumerate(updates) if name in u.sparse]
        if owners:
            arrays[f"rows::{name}"] = torch.cat([updates[i].sparse[name][0] for i in owners])
            arrays[f"values::{name}"] = torch.cat([updates[i].sparse[name][1] for i in owners])
            counts = [updates[i].sparse[name][0].numel() for i in owners]
            arrays[f"sparse_users::{name}"] = torch.tensor([owners, counts], dtype=torch.long)
    return ArrayRecord(torch_state_dict=arrays)


def record_to_updates(record: ArrayRecord) -> list[tuple[int, ClientUpdate]]:
    """The inverse of :func:`updates_to_record`: ``(user, update)`` pairs in the sent order."""
    arrays = record.to_torch_state_dict()
    users = arrays.pop("users").tolist()
    updates = [ClientUpdate(dense={}, sparse={}, weight=float(w)) for w in arrays.pop("weights").tolist()]
    for key, value in arrays.items():
        kind, _, name = key.partition("::")
        if kind == "dense":
            for i, delta in zip(arrays[f"dense_users::{name}"].tolist(), value, strict=True):
                updates[i].dense[name] = delta
        elif kind == "rows":
            owners, counts = arrays[f"sparse_users::{name}"].tolist()
            for i, rows, values in zip(
                owners, value.split(counts), arrays[f"values::{name}"].split(counts), strict=True
            ):
                updates[i].sparse[name] = (rows, values)
    return list(zip(users, updates, strict=True))


# --------------------------------------------------------------------- ClientApp
client_app = ClientApp()


@cache
def _node_state(run_key: str) -> tuple[Any, LocalTrainer, ClientPartition]:
    config, model, train_data, _, _ = experiment(json.loads(run_key))
    model = copy.deepcopy(model)
    histories = training_histories(train_data._dataset)
    blocks = None
    if getattr(model, "needs_views", False):
        from recbole_lumos.data.view_blocks import view_blocks
        from recbole_lumos.generation import ensure_views

        views = ensure_views(config, train_data._dataset, train_data._dataset)
        blocks = view_blocks(histories, views.views, train_data._dataset, int(config["MAX_ITEM_LIST_LENGTH"]))
    stride = int(config["window_stride"]) if config["window_stride"] else None
    partition = ClientPartition(histories, int(config["MAX_ITEM_LIST_LENGTH"]), stride, blocks)
    return config, LocalTrainer(model, LocalSettings.from_config(config)), partition


@client_app.query()
def describe(msg: Message, context: Context) -> Message:
    """Which shard of the users this node hosts."""
    content = RecordDict(
        {
            "node": ConfigRecord(
                {
                    "partition-id": int(context.node_config.get("partition-id", 0)),
                    "num-partitions": int(context.node_config.get("num-partitions", 1)),
                }
            )
        }
    )
    return Message(content=content, reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the requested users of this node for one round; reply with their updates."""
    config, trainer, partition = _node_state(json.dumps(dict(context.run_config), sort_keys=True))
    settings = msg.content["config"]
    users = [int(u) for u in settings["users"]]
    round_index, seed = int(settings["round"]), int(config["seed"])
    part, parts = int(context.node_config.get("partition-id", 0)), int(context.node_config.get("num-partitions", 1))
    foreign = [u for u in users if u % parts != part]
    if foreign:
        raise ValueError(f"users {foreign[:5]} are not hosted on partition {part} of {parts}")
    global_params = msg.content["backbone"].to_torch_state_dict()
    index = {client.user: i for i, client in enumerate(partition.clients)}
    torch.manual_seed(seed * 100_003 + round_index * 1_009 + part)
    negatives = torch.Generator().manual_seed(seed * 100_019 + round_index * 1_009 + part)
    noise = torch.Generator().manual_seed(seed * 100_043 + round_index * 1_009 + part)
    shapes = {name: p.shape for name, p in global_params.items()}
    batch = max(1, int(config["client_batch"] or 1))
    hosted = [u for u in users if u in index]
    sent: list[ClientUpdate] = []
    for start in range(0, len(hosted), batch):
        members = hosted[start : start + batch]
        cohort = collate_cohort([(index[u], partition.clients[index[u]]) for u in members])
        updates = trainer.cohort_updates(global_params, cohort, negatives, one_by_one=batch == 1)
        for update in updates:
            update = update.compact(shapes)
            if config["ldp_clip"]:
                update = privatize(
                    update, float(config["ldp_clip"]), float(config["ldp_noise_multiplier"] or 0), shapes, noise
                )
            sent.append(update)
    return Message(content=RecordDict({"updates": updates_to_record(hosted, sent)}), reply_to=msg)


# --------------------------------------------------------------------- ServerApp
server_app = ServerApp()


def _evaluate(evaluator: Any, data: Any) -> dict[str, float]:
    """RecBole's own full-ranking evaluation (``evaluator`` is RecBole's trainer for the model)."""
    result = evaluator.evaluate(data, load_best_model=False, show_progress=False)
    return {k: float(v) for k, v in result.items()}


def _node_shards(grid: Grid) -> dict[int, int]:
    """``partition-id -> node id`` for every connected SuperNode."""
    nodes = list(grid.get_node_ids())
    queries = [grid.create_message(RecordDict(), "query", node, "describe") for node in nodes]
    shards, total = {}, set()
    for reply in grid.send_and_receive(queries):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed to describe itself: {reply.error}")
        node = reply.content["node"]
        shards[int(node["partition-id"])] = reply.metadata.src_node_id
        total.add(int(node["num-partitions"]))
    if len(total) != 1 or sorted(shards) != list(range(total.pop())):
        raise RuntimeError(f"SuperNodes must cover partitions 0..N-1 of one N; got {sorted(shards)}")
    return shards


def run_server(grid: Grid, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The federated protocol over ``grid``; returns metrics, rounds and traffic."""
    log = logging.getLogger()
    from recbole.utils import get_trainer

    from recbole_lumos.federated.runner import clients_per_round, validation_schedule

    config, model, train_data, valid_data, test_data = experiment(run_config)
    model = copy.deepcopy(model)
    evaluator = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    # The registry of clients: the users with a training position, in the in-process order.
    histories = training_histories(train_data._dataset)
    users = torch.tensor([c.user for c in ClientPartition(histories, int(config["MAX_ITEM_LIST_LENGTH"])).clients])
    shards = _node_shards(grid)

    sampler = RoundSampler(
        len(users), clients_per_round=clients_per_round(config, len(users)), client_batch=1, seed=int(config["seed"])
    )
    params = dict(model.named_parameters())
    shapes = {name: p.shape for name, p in params.items()}
    server = build_server_optimizer(params.values(), config)
    eval_step, patience = validation_schedule(config, True)
    metric = str(config["valid_metric"]).lower()
    best, best_state, best_round, waited = None, None, -1, 0
    curve, traffic = [], []
    rounds = int(config["epochs"])
    for round_index in range(rounds):
        chosen = users[torch.as_tensor(sampler.round_clients(round_index))].tolist()
        backbone = ArrayRecord(torch_state_dict={k: v.detach() for k, v in params.items()})
        messages = []
        for part, node in shards.items():
            mine = [u for u in chosen if u % len(shards) == part]
            if mine:
                content = RecordDict(
                    {"backbone": backbone, "config": ConfigRecord({"users": mine, "round": round_index})}
                )
                messages.append(grid.create_message(content, "train", node, str(round_index)))
        aggregator = build_aggregator(str(config["aggregator"] or "fedavg"), shapes, config)
        up = 0
        for reply in grid.send_and_receive(messages):
            if reply.has_error():
                raise RuntimeError(f"round {round_index}: node {reply.metadata.src_node_id} failed: {reply.error}")
            for _, update in record_to_updates(reply.content["updates"]):
                up += update.num_bytes()
                aggregator.add(update)
        apply_aggregate(server, params, aggregator.result())
        traffic.append({"round": round_index, "clients": len(chosen), "bytes_up_per_client": up / len(chosen)})
        if (round_index + 1) % eval_step:
            continue
        valid = _evaluate(evaluator, valid_data)
        curve.append({"epoch": float(round_index), **valid})
        log.info("round %d: valid %s", round_index, valid)
        if best is None or valid[metric] > best:
            best, best_round, waited = valid[metric], round_index, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {
        "best_valid_result": _evaluate(evaluator, valid_data),
        "test_result": _evaluate(evaluator, test_data),
        "best_round": best_round,
        "rounds": round_index + 1,
        "valid_curve": curve,
        "traffic": traffic,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's entry point: run the protocol and write the result JSON (``result-file``)."""
    result = run_server(grid, context.run_config)
    out = Path(str(context.run_config.get("result-file", "flower-result.json")))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({k: v for k, v in result.items() if k != "state_dict"}, indent=1))
    logging.getLogger().info("test result: %s (written to %s)", result["test_result"], out)
