"""More than one machine: a Flower app around the same local update and aggregation.

Flower's deployment engine (SuperLink + SuperNodes over gRPC, ``flwr run``) carries the
messages; everything that decides the numbers is this package's own code, so a Flower
run and an in-process run of the same config agree (tested):

* **SuperNode** = one machine (or device) hosting a shard of the users: user ``u``
  lives on the node whose ``node_config`` has ``partition-id = u % num-partitions``.
  Its :data:`client_app` trains the users it is asked to with
  :func:`~recbole_lumos.federated.client_round.train_cohort_round` (cohorts of
  ``client_batch``; local DP when configured), the function the in-process engine
  calls, and sends back each user's update: parameter deltas only.
* **ServerApp** (:data:`server_app`): each round draws the users exactly as the
  in-process engine does (:class:`RoundSampler`, seeded by ``(seed, round)``), sends
  every node the global backbone and its share of the users, folds the updates into
  the configured aggregator and server optimiser (in the order the messages were sent,
  whichever node answers first), validates with RecBole's evaluator every
  ``federated_eval_step`` rounds with early stopping in the metric's direction
  (``valid_metric_bigger``), and tests the best state.

**Node cache.** Flower 1.42 starts a fresh ClientApp process for every message, so a node
would reload the dataset every round. A node prepares its data once (when the ServerApp
asks it to describe itself) and saves it: the model skeleton and the clients of its shard,
in ``<checkpoint_dir>/flower-node-cache`` (run config key ``node-cache``: another folder, or
``"off"``). The file is keyed by the full config, the shard, the dataset files' sizes and
mtimes and the code that builds the data, and carries a checksum: a corrupt or stale file is
rebuilt, never used. The weights come with every message.

Each train reply also carries the node's timings (process start-up, data, training), which
the ServerApp records per round in ``traffic`` next to the round's ``seconds``
(``benchmarks/flower_round.py``).

Flower is an optional extra (``pip install -e ".[flower]"``); its Ray simulation extra
conflicts with RecBole's ray pin and is not used. See the README for the commands.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from recbole_lumos.data.partition import ClientPartition, RoundSampler, collate_cohort, training_histories
from recbole_lumos.federated.aggregators import build_aggregator
from recbole_lumos.federated.client_model import needs_views
from recbole_lumos.federated.client_round import PrivacySettings, train_cohort_round
from recbole_lumos.federated.local_update import LocalSettings, LocalTrainer
from recbole_lumos.federated.server_optimizer import apply_aggregate, build_server_optimizer
from recbole_lumos.federated.update import ClientUpdate
from recbole_lumos.recommender import build_recommender


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
    from recbole_lumos.errors import ConfigurationError

    config = build_config(model_name, dataset, config_files, {**json.loads(overrides_json), "federated": True})
    in_process_only = [k for k in ("attack", "noise_ratio", "target_items") if config[k] not in (None, "none", 0, 0.0)]
    if in_process_only:
        raise ConfigurationError(
            f"{', '.join(in_process_only)}: noisy clients, attacks and ER@K run in the in-process engine only "
            "(python run_recbole_lumos.py ...), not yet in the Flower app."
        )
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, data)
    init_seed(config["seed"], config["reproducibility"])
    model = build_recommender(config.model_class, config, train_data._dataset)
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


# ----------------------------------------------------------- a node's data, cached
NODE_CACHE_FORMAT = 1
"""Bumped when :class:`NodeData` or what goes into it changes: older cache files are rebuilt."""

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_DATA_CODE = ("config.py", "data", "model", "generation", "federated/flower.py")
"""This package's code that builds a node's data (hashed into the cache key)."""


@dataclass
class NodeData:
    """What a SuperNode prepares from the dataset files: the model (its architecture and
    buffers; the weights come with every message) and the clients of the users it hosts."""

    model: torch.nn.Module
    partition: ClientPartition


def hosts(user: int, part: int, parts: int) -> bool:
    """User ``u`` lives on partition ``u % parts``."""
    return user % parts == part


def node_config(run_config: Mapping[str, Any]):
    """The run's RecBole config, built from the run config alone (no data: milliseconds)."""
    from recbole.utils import init_seed

    from recbole_lumos.config import build_config

    model, dataset, files, overrides = run_settings(run_config)
    config = build_config(model, dataset, files, {**overrides, "federated": True})
    init_seed(config["seed"], config["reproducibility"])
    return config


def build_node_data(run_config: Mapping[str, Any], part: int, parts: int) -> NodeData:
    """Load the dataset and prepare this node's clients (what the cache saves)."""
    config, model, train_data, _, _ = experiment(run_config)
    model = copy.deepcopy(model)
    histories = {u: h for u, h in training_histories(train_data._dataset).items() if hosts(u, part, parts)}
    blocks = None
    if needs_views(model):
        from recbole_lumos.data.view_blocks import view_blocks
        from recbole_lumos.generation import ensure_views

        views = ensure_views(config, train_data._dataset, train_data._dataset)
        blocks = view_blocks(
            histories,
            views.views,
            train_data._dataset,
            int(config["MAX_ITEM_LIST_LENGTH"]),
            int(config["lumos_num_counterfactuals"] or 1),
        )
    stride = int(config["window_stride"]) if config["window_stride"] else None
    return NodeData(model, ClientPartition(histories, int(config["MAX_ITEM_LIST_LENGTH"]), stride, blocks))


def node_cache_dir(run_config: Mapping[str, Any], config: Any) -> Path | None:
    """``node-cache`` of the run config: ``""`` is ``<checkpoint_dir>/flower-node-cache``,
    ``"off"`` disables the cache; relative paths are the SuperNode's working directory."""
    where = str(run_config.get("node-cache", "")).strip()
    if where.lower() in {"off", "none", "false", "0"}:
        return None
    return Path(where) if where else Path(str(config["checkpoint_dir"])) / "flower-node-cache"


def node_cache_key(config: Any, part: int, parts: int) -> str:
    """Everything a node's data depends on: the full config (the run config and every YAML
    file it reads), the node's shard, the dataset files' sizes and mtimes, and the contents
    of the code that builds the data (:data:`_DATA_CODE`)."""
    dataset_dir = Path(str(config["data_path"]))
    dataset = str(config["dataset"])
    files = sorted(p for p in dataset_dir.glob(f"{dataset}.*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no dataset files {dataset}.* in {dataset_dir}")
    code = []
    for name in _DATA_CODE:
        path = _PACKAGE_DIR / name
        code += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for item in [
        f"format {NODE_CACHE_FORMAT}",
        f"partition {part} of {parts}",
        repr(sorted(config.final_config_dict.items())),
        *(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files),
    ]:
        digest.update(item.encode() + b"\0")
    for path in code:
        digest.update(f"{path.relative_to(_PACKAGE_DIR)}:".encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def save_node_data(path: Path, key: str, data: NodeData) -> None:
    """Write atomically: ``sha256 of the payload``, a newline, then ``torch.save`` bytes."""
    buffer = io.BytesIO()
    torch.save({"format": NODE_CACHE_FORMAT, "key": key, "model": data.model, "partition": data.partition}, buffer)
    payload = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    os.replace(partial, path)


def read_node_data(path: Path, key: str) -> NodeData:
    """The cached data, or an exception if the file is corrupt, truncated or for another key."""
    from recbole_lumos.compat import restore_numpy_aliases

    digest, _, payload = path.read_bytes().partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError("checksum mismatch (corrupt or truncated file)")
    restore_numpy_aliases()
    saved = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)  # our own file, checksummed
    if not isinstance(saved, dict) or saved.get("format") != NODE_CACHE_FORMAT or saved.get("key") != key:
        raise ValueError("written for another format or key")
    if not isinstance(saved.get("model"), torch.nn.Module) or not isinstance(saved.get("partition"), ClientPartition):
        raise ValueError("unexpected contents")
    return NodeData(saved["model"], saved["partition"])


def load_node_data(run_config: Mapping[str, Any], config: Any, part: int, parts: int) -> tuple[NodeData, str]:
    """This node's data and where it came from: ``"cache"``, ``"built"`` (and cached) or
    ``"built, no cache"``. A cache file that cannot be read, fails its checksum or was
    written for other inputs is rebuilt and replaced, never used."""
    log = logging.getLogger()
    folder = node_cache_dir(run_config, config)
    if folder is None:
        return build_node_data(run_config, part, parts), "built, no cache"
    key = node_cache_key(config, part, parts)
    path = folder / f"node-{part}of{parts}-{key[:24]}.pt"
    if path.is_file():
        try:
            return read_node_data(path, key), "cache"
        except Exception as error:  # noqa: BLE001 - any unreadable cache is rebuilt
            log.warning("node cache %s is unusable (%s: %s); rebuilding it", path, type(error).__name__, error)
    data = build_node_data(run_config, part, parts)
    try:
        save_node_data(path, key, data)
    except OSError as error:
        log.warning("could not write the node cache %s (%s); continuing without it", path, error)
    return data, "built"


# --------------------------------------------------------------------- ClientApp
client_app = ClientApp()


def _process_age() -> float:
    """Seconds since this process started (Linux; NaN elsewhere): a ClientApp's start-up cost."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


@cache
def _node_state(run_key: str, part: int, parts: int) -> tuple[Any, LocalTrainer, ClientPartition, str]:
    """Config, local trainer, this node's clients and where the data came from; once per process."""
    run_config = json.loads(run_key)
    config = node_config(run_config)
    data, source = load_node_data(run_config, config, part, parts)
    return config, LocalTrainer(data.model, LocalSettings.from_config(config)), data.partition, source


def _shard(context: Context) -> tuple[int, int]:
    return int(context.node_config.get("partition-id", 0)), int(context.node_config.get("num-partitions", 1))


def _run_key(context: Context) -> str:
    return json.dumps(dict(context.run_config), sort_keys=True)


@client_app.query()
def describe(msg: Message, context: Context) -> Message:
    """Which shard of the users this node hosts; prepares (and caches) the node's data."""
    part, parts = _shard(context)
    started = time.perf_counter()
    _, _, partition, source = _node_state(_run_key(context), part, parts)
    node = {"partition-id": part, "num-partitions": parts, "clients": len(partition), "data": source}
    metrics = MetricRecord({"prepare_s": time.perf_counter() - started})
    return Message(content=RecordDict({"node": ConfigRecord(node), "metrics": metrics}), reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the requested users of this node for one round; reply with their updates."""
    entered = time.perf_counter()
    startup = _process_age()
    part, parts = _shard(context)
    settings = msg.content["config"]
    users = [int(u) for u in settings["users"]]
    foreign = [u for u in users if not hosts(u, part, parts)]
    if foreign:
        raise ValueError(f"users {foreign[:5]} are not hosted on partition {part} of {parts}")
    config, trainer, partition, source = _node_state(_run_key(context), part, parts)
    prepared = time.perf_counter()
    round_index, seed = int(settings["round"]), int(config["seed"])
    global_params = msg.content["backbone"].to_torch_state_dict()
    index = {client.user: i for i, client in enumerate(partition.clients)}
    torch.manual_seed(seed * 100_003 + round_index * 1_009 + part)
    negatives = torch.Generator().manual_seed(seed * 100_019 + round_index * 1_009 + part)
    noise = torch.Generator().manual_seed(seed * 100_043 + round_index * 1_009 + part)
    batch = max(1, int(config["client_batch"] or 1))
    privacy = PrivacySettings.from_config(config)
    hosted = [u for u in users if u in index]
    sent: list[ClientUpdate] = []
    for start in range(0, len(hosted), batch):
        members = hosted[start : start + batch]
        cohort = collate_cohort([(index[u], partition.clients[index[u]]) for u in members])
        sent += train_cohort_round(trainer, global_params, cohort, negatives, noise, privacy, one_by_one=batch == 1)
    metrics = MetricRecord(
        {
            "startup_s": startup,
            "prepare_s": prepared - entered,
            "train_s": time.perf_counter() - prepared,
            "cached": float(source == "cache"),
        }
    )
    content = RecordDict({"updates": updates_to_record(hosted, sent), "metrics": metrics})
    return Message(content=content, reply_to=msg)


# --------------------------------------------------------------------- ServerApp
server_app = ServerApp()


def _evaluate(evaluator: Any, data: Any) -> dict[str, float]:
    """RecBole's own full-ranking evaluation (``evaluator`` is RecBole's trainer for the model)."""
    result = evaluator.evaluate(data, load_best_model=False, show_progress=False)
    return {k: float(v) for k, v in result.items()}


POLL_S = 0.05
"""How often the ServerApp asks the SuperLink for replies. Flower's ``Grid.send_and_receive``
sleeps 3 s between pulls, which would add up to 3 s to every round."""


def exchange(grid: Grid, messages: Iterable[Message], poll_s: float = POLL_S) -> list[Message]:
    """Push ``messages`` and wait for every reply; replies come back in the order sent (so
    aggregation does not depend on which node answers first)."""
    messages = list(messages)
    ids = list(grid.push_messages(messages))
    if len(ids) != len(messages) or any(not i for i in ids):
        raise RuntimeError(f"the SuperLink refused {sum(not i for i in ids)} of {len(messages)} messages")
    replies: dict[str, Message] = {}
    while len(replies) < len(ids):
        for reply in grid.pull_messages([i for i in ids if i not in replies]):
            replies[reply.metadata.reply_to_message_id] = reply
        if len(replies) < len(ids):
            time.sleep(poll_s)
    return [replies[i] for i in ids]


def _node_shards(grid: Grid) -> dict[int, int]:
    """``partition-id -> node id`` for every connected SuperNode (each prepares its data now)."""
    log = logging.getLogger()
    nodes = list(grid.get_node_ids())
    queries = [grid.create_message(RecordDict(), "query", node, "describe") for node in nodes]
    shards, total = {}, set()
    for reply in exchange(grid, queries):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed to describe itself: {reply.error}")
        node = reply.content["node"]
        shards[int(node["partition-id"])] = reply.metadata.src_node_id
        log.info(
            "node %s: partition %s of %s, %s clients, data %s in %.1f s",
            reply.metadata.src_node_id,
            node["partition-id"],
            node["num-partitions"],
            node.get("clients"),
            node.get("data"),
            float(reply.content["metrics"]["prepare_s"]) if "metrics" in reply.content else float("nan"),
        )
        total.add(int(node["num-partitions"]))
    if len(total) != 1 or sorted(shards) != list(range(total.pop())):
        raise RuntimeError(f"SuperNodes must cover partitions 0..N-1 of one N; got {sorted(shards)}")
    return shards


def improved(value: float, best: float | None, bigger: bool) -> bool:
    """Whether a validation beats the best so far, in the metric's direction (strictly, as
    Lightning's EarlyStopping and ModelCheckpoint do in the in-process engine)."""
    return best is None or (value > best if bigger else value < best)


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
    server = build_server_optimizer(params, config)
    eval_step, patience = validation_schedule(config, True)
    metric = str(config["valid_metric"]).lower()
    bigger = bool(config["valid_metric_bigger"])  # RecBole sets it from the metric (False for GiniIndex, ...)
    best, best_state, best_round, waited = None, None, -1, 0
    curve, traffic = [], []
    rounds = int(config["epochs"])
    for round_index in range(rounds):
        started = time.perf_counter()
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
        up, nodes = 0, []
        for reply in exchange(grid, messages):
            if reply.has_error():
                raise RuntimeError(f"round {round_index}: node {reply.metadata.src_node_id} failed: {reply.error}")
            for _, update in record_to_updates(reply.content["updates"]):
                up += update.num_bytes()
                aggregator.add(update)
            if "metrics" in reply.content:
                nodes.append(reply.content["metrics"])
        aggregate = aggregator.result()
        apply_aggregate(server, params, aggregate, aggregator.sent_rows)
        # Seconds until every reply was in, and the slowest node's ClientApp process: its
        # start-up (process and imports), data preparation and local training.
        timing = {"nodes_s": time.perf_counter() - started}
        for key in ("startup_s", "prepare_s", "train_s") if nodes else ():
            timing[f"node_{key}"] = max(float(m[key]) for m in nodes)
        if nodes:
            timing["nodes_from_cache"] = sum(float(m["cached"]) for m in nodes)
        traffic.append(
            {"round": round_index, "clients": len(chosen), "bytes_up_per_client": up / len(chosen), **timing}
        )
        stop = False
        if (round_index + 1) % eval_step == 0:
            valid = _evaluate(evaluator, valid_data)
            curve.append({"epoch": float(round_index), **valid})
            log.info("round %d: valid %s", round_index, valid)
            if improved(valid[metric], best, bigger):
                best, best_round, waited = valid[metric], round_index, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                waited += 1
                stop = waited >= patience
        traffic[-1]["seconds"] = time.perf_counter() - started  # the round's wall time, validation included
        if stop:
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
