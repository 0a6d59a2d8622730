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
* **ServerApp** (:data:`server_app`): Flower's own round loop (``Strategy.start``) over
  :class:`LumosStrategy`, which draws each round's clients and cohorts exactly as the
  in-process engine does (:class:`RoundSampler`, ``client_dropout`` included, seeded by
  ``(seed, round)``; the same seeds for negatives, noise and dropout layers), and hands the
  replies to the :class:`~recbole_lumos.federated.server_step.ServerStep` the Lightning
  callback uses (update checks, aggregator, server optimiser). Lost nodes (an error reply,
  or none within ``round-timeout``) are logged and counted; a round is aggregated over the
  replies that came in (at least ``min-replies`` / ``min-reply-fraction``). It validates with
  RecBole's evaluator every ``federated_eval_step`` rounds with early stopping in the
  metric's direction (``valid_metric_bigger``), checkpoints its state every
  ``checkpoint-every`` rounds (resumed on restart), and tests the best state.

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
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from recbole_lumos.data.partition import ClientPartition, RoundSampler, collate_cohort, training_histories
from recbole_lumos.federated.client_model import needs_views
from recbole_lumos.federated.client_round import (
    PrivacySettings,
    negatives_seed,
    noise_seed,
    round_seed,
    train_cohort_round,
)
from recbole_lumos.federated.local_update import LocalSettings, LocalTrainer
from recbole_lumos.federated.population import client_view_blocks
from recbole_lumos.federated.server_step import ServerStep
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
    if needs_views(model):  # the in-process engine's path: randViews and randC included
        blocks, _ = client_view_blocks(config, histories, train_data._dataset)
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
    round_index = int(settings["round"])
    global_params = msg.content["backbone"].to_torch_state_dict()
    index = {client.user: i for i, client in enumerate(partition.clients)}
    # The in-process engine's seeds for the round (federated/module.py); the negatives of each
    # cohort continue the round's stream where the server says the cohort starts (round_plan).
    torch.manual_seed(round_seed(int(config["seed"]), round_index))
    noise = torch.Generator().manual_seed(noise_seed(int(config["seed"]), round_index))
    states = msg.content["negatives"].to_torch_state_dict()["states"]
    sizes = [int(n) for n in settings["cohort-sizes"]]
    privacy = PrivacySettings.from_config(config)
    one_by_one = max(1, int(config["client_batch"] or 1)) == 1
    missing = [u for u in users if u not in index]
    if missing:
        raise ValueError(f"users {missing[:5]} have no training data on partition {part} of {parts}")
    sent: list[ClientUpdate] = []
    start = 0
    for size, state in zip(sizes, states, strict=True):
        members = users[start : start + size]
        start += size
        negatives = torch.Generator()
        negatives.set_state(state.clone())  # its own storage: set_state reads a row of a stack wrongly
        cohort = collate_cohort([(index[u], partition.clients[index[u]]) for u in members])
        sent += train_cohort_round(trainer, global_params, cohort, negatives, noise, privacy, one_by_one=one_by_one)
    hosted = users
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


def exchange(
    grid: Grid, messages: Iterable[Message], timeout: float | None = None, poll_s: float = POLL_S
) -> list[Message]:
    """Push ``messages`` and return the replies that came in before ``timeout`` seconds
    (``None``: wait for all), in the order the messages were sent. A message the SuperLink
    refused, or one without a reply in time, has none: the caller sees the node as lost."""
    messages = list(messages)
    ids = [i for i in grid.push_messages(messages) if i]
    if len(ids) < len(messages):
        refused = len(messages) - len(ids)
        logging.getLogger().warning("the SuperLink refused %d of %d messages", refused, len(messages))
    replies: dict[str, Message] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    while len(replies) < len(ids) and (deadline is None or time.monotonic() < deadline):
        for reply in grid.pull_messages([i for i in ids if i not in replies]):
            replies[reply.metadata.reply_to_message_id] = reply
        if len(replies) < len(ids):
            time.sleep(poll_s)
    return [replies[i] for i in ids if i in replies]


class PollingGrid(Grid):
    """``grid`` with :func:`exchange` as ``send_and_receive`` (the same timeout, a shorter poll),
    for Flower's own round loop (:meth:`Strategy.start`)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run_id: int) -> None:
        self.grid.set_run(run_id)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return exchange(self.grid, messages, timeout)


def describe_nodes(grid: Grid, nodes: Iterable[int], timeout: float | None = None) -> dict[int, int]:
    """``partition-id -> node id`` of the SuperNodes ``nodes`` that answered (each prepares its data now)."""
    log = logging.getLogger()
    queries = [grid.create_message(RecordDict(), "query", node, "describe") for node in nodes]
    shards = {}
    for reply in exchange(grid, queries, timeout):
        if reply.has_error():
            log.warning("node %s failed to describe itself: %s", reply.metadata.src_node_id, reply.error)
            continue
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
    return shards


def _node_shards(grid: Grid, timeout: float | None = None) -> tuple[dict[int, int], int]:
    """``(partition-id -> node id, num-partitions)`` of every connected SuperNode."""
    shards = describe_nodes(grid, list(grid.get_node_ids()), timeout)
    parts = len(shards)
    if sorted(shards) != list(range(parts)):
        raise RuntimeError(f"SuperNodes must cover partitions 0..N-1 of one N; got {sorted(shards)}")
    return shards, parts


def improved(value: float, best: float | None, bigger: bool) -> bool:
    """Whether a validation beats the best so far, in the metric's direction (strictly, as
    Lightning's EarlyStopping and ModelCheckpoint do in the in-process engine)."""
    return best is None or (value > best if bigger else value < best)


def round_plan(
    sampler: RoundSampler, partition: ClientPartition, trainer: LocalTrainer, seed: int, round_index: int
) -> list[tuple[list[int], torch.Tensor]]:
    """Round ``round_index``'s cohorts as the in-process engine trains them (partition indices),
    each with the state of the round's negatives stream where the cohort starts.

    In-process, the cohorts draw their negatives one after another from one generator seeded
    by ``(seed, round)``; the server replays those draws (random numbers only, no training) so
    that a SuperNode training its members of a cohort draws the very same negatives."""
    negatives = torch.Generator().manual_seed(negatives_seed(seed, round_index))
    plan = []
    for members in sampler.cohorts(round_index):
        state = negatives.get_state()
        targets = collate_cohort([(i, partition.clients[i]) for i in members]).targets
        for _ in range(trainer.settings.local_epochs):
            trainer.draw_negatives(targets, negatives)
        plan.append((members, state))
    return plan


@dataclass
class ServerProgress:
    """What the ServerApp checkpoints besides the weights and the server optimiser."""

    next_round: int = 0
    best: float | None = None
    best_round: int = -1
    waited: int = 0
    stopped: bool = False
    best_state: dict[str, torch.Tensor] | None = None
    curve: list[dict[str, float]] = field(default_factory=list)
    traffic: list[dict[str, float]] = field(default_factory=list)
    lost_nodes: list[dict[str, Any]] = field(default_factory=list)


class LumosStrategy(Strategy):
    """The federated protocol as a Flower strategy, over the engines' shared server step.

    ``configure_train`` draws the round's clients and cohorts as the in-process engine does
    (:class:`RoundSampler` with its length order and ``client_dropout``, seeded by
    ``(seed, round)``) and sends each SuperNode its members of every cohort, with the
    negatives stream's state at the cohort's start (:func:`round_plan`). ``aggregate_train``
    folds the replies, in partition order, into the :class:`ServerStep` the Lightning
    callback uses (checks, aggregator, server optimiser). A node that answers with an error
    (Flower's "Node Unavailable" for a lost SuperNode, or its ClientApp's exception) or not
    within the round's timeout is logged and counted in ``lost_nodes``; the round is
    aggregated over the replies that came in, as long as at least ``min-replies`` nodes and
    ``min-reply-fraction`` of them answered, else the run stops (resumable). Validation runs
    centrally after each ``federated_eval_step`` rounds (Flower's ``evaluate_fn``) with early
    stopping; every ``checkpoint-every`` rounds the server state is saved (:meth:`save`).
    """

    def __init__(
        self, config: Any, model: torch.nn.Module, evaluator: Any, valid_data: Any, settings: Mapping[str, Any]
    ) -> None:
        self.config = config
        self.model = model
        self.evaluator = evaluator
        self.valid_data = valid_data
        self.seed = int(config["seed"])
        self.min_replies = int(settings.get("min-replies", 1))
        self.min_reply_fraction = float(settings.get("min-reply-fraction", 0.0))
        self.checkpoint_every = int(settings.get("checkpoint-every", 1))
        self.checkpoint: Path | None = settings.get("checkpoint")
        self.shards: dict[int, int] = dict(settings["shards"])
        self.parts = int(settings["parts"])
        self.timeout = settings.get("timeout")
        self.server = ServerStep(dict(model.named_parameters()), config)
        self.trainer = LocalTrainer(model, LocalSettings.from_config(config))
        self.partition = settings["partition"]
        windows = [client.inputs.size(0) for client in self.partition.clients]
        from recbole_lumos.federated.runner import client_dropout, clients_per_round, validation_schedule

        self.sampler = RoundSampler(
            len(self.partition),
            clients_per_round=clients_per_round(config, len(self.partition)),
            client_batch=int(config["client_batch"] or 1),
            seed=self.seed,
            lengths=windows,
            dropout=client_dropout(config),
        )
        self.eval_step, self.patience = validation_schedule(config, True)
        self.metric = str(config["valid_metric"]).lower()
        self.bigger = bool(config["valid_metric_bigger"])  # RecBole sets it from the metric
        self.progress = ServerProgress()
        self._sent: dict[int, list[int]] = {}
        self._trained = False

    # ------------------------------------------------------------------ state
    def save(self) -> None:
        """The server state, atomically: weights, server optimiser, round, best model, curve, patience."""
        if self.checkpoint is None:
            return
        state = {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "server_optimizer": self.server.state_dict(),
            "progress": self.progress.__dict__,
        }
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        partial = self.checkpoint.with_name(f"{self.checkpoint.name}.{os.getpid()}.partial")
        torch.save(state, partial)
        os.replace(partial, self.checkpoint)
        done = self.progress.next_round - 1
        logging.getLogger().info("server state after round %d saved to %s", done, self.checkpoint)

    def resume(self) -> bool:
        """Load the server state saved by :meth:`save` when the checkpoint exists."""
        if self.checkpoint is None or not self.checkpoint.is_file():
            return False
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.server.load_state_dict(state["server_optimizer"])
        self.progress = ServerProgress(**state["progress"])
        logging.getLogger().info("resuming after round %d from %s", self.progress.next_round - 1, self.checkpoint)
        return True

    # ---------------------------------------------------------------- training
    def summary(self) -> None:
        logging.getLogger().info(
            "LumosStrategy: %s + %s, %d clients a round (dropout %g), %d partitions, at least %d replies / %g",
            self.server.name,
            self.config["server_optimizer"],
            self.sampler.clients_per_round,
            self.sampler.dropout,
            self.parts,
            self.min_replies,
            self.min_reply_fraction,
        )

    def _find_returned_nodes(self, grid: Grid) -> None:
        """A SuperNode that restarted comes back with a new node id: ask the new ones who they are."""
        known = set(self.shards.values())
        new = [node for node in grid.get_node_ids() if node not in known]
        if new:
            for part, node in describe_nodes(grid, new, self.timeout).items():
                logging.getLogger().info("partition %d is now node %s", part, node)
                self.shards[part] = node

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._trained, self._sent = False, {}
        if self.progress.stopped:
            return []
        self._find_returned_nodes(grid)
        round_index = self.progress.next_round
        self._started = time.perf_counter()
        plan = round_plan(self.sampler, self.partition, self.trainer, self.seed, round_index)
        self._clients = sum(len(members) for members, _ in plan)
        self._dropped = len(self.sampler.dropped(round_index))
        backbone = ArrayRecord(torch_state_dict={k: v.detach() for k, v in self.model.named_parameters()})
        messages = []
        for part, node in sorted(self.shards.items()):
            users, sizes, states = [], [], []
            for members, state in plan:
                mine = [self.partition.clients[i].user for i in members]
                mine = [u for u in mine if hosts(u, part, self.parts)]
                if mine:
                    users += mine
                    sizes.append(len(mine))
                    states.append(state)
            if users:
                settings = ConfigRecord({"users": users, "cohort-sizes": sizes, "round": round_index})
                negatives = ArrayRecord(torch_state_dict={"states": torch.stack(states)})
                content = RecordDict({"backbone": backbone, "negatives": negatives, "config": settings})
                messages.append(grid.create_message(content, "train", node, str(round_index)))
                self._sent[node] = users
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.progress.stopped:
            return None, None
        log = logging.getLogger()
        round_index = self.progress.next_round
        by_node = {reply.metadata.src_node_id: reply for reply in replies}
        bounds = {client.user: float(client.num_positions) for client in self.partition.clients}
        parts = {node: part for part, node in self.shards.items()}
        self.server.start_round(round_index)
        answered, lost, up, nodes = 0, 0, 0, []
        for node, users in self._sent.items():  # partition order, whichever node answered first
            reply = by_node.get(node)
            reason = "no reply within the round's timeout" if reply is None else None
            if reply is not None and reply.has_error():
                reason = f"error {reply.error.code}: {reply.error.reason}"
            decoded = []
            if reason is None:
                try:
                    decoded = record_to_updates(reply.content["updates"])
                except Exception as error:  # noqa: BLE001 - a malformed reply is a lost reply
                    reason = f"unreadable updates ({type(error).__name__}: {error})"
            if reason is not None:
                lost += 1
                log.warning("round %d: node %s (partition %s) lost: %s", round_index, node, parts.get(node), reason)
                lost_node = {"round": round_index, "node": node, "partition": parts.get(node), "reason": reason}
                self.progress.lost_nodes.append(lost_node)
                continue
            answered += 1
            asked = set(users)
            for user, update in decoded:
                up += update.num_bytes()
                self.server.add(update, bounds[user] if user in asked else -1.0, user)
            if "metrics" in reply.content:
                nodes.append(reply.content["metrics"])
        needed = min(len(self._sent), max(self.min_replies, math.ceil(self.min_reply_fraction * len(self._sent))))
        if answered < needed:
            raise RuntimeError(
                f"round {round_index}: {answered} of {len(self._sent)} nodes answered, fewer than the {needed} needed "
                f"(min-replies {self.min_replies}, min-reply-fraction {self.min_reply_fraction}). The server state "
                "of the last checkpoint is kept: run again to resume."
            )
        self.server.apply()
        timing = {"nodes_s": time.perf_counter() - self._started}
        for key in ("startup_s", "prepare_s", "train_s") if nodes else ():
            timing[f"node_{key}"] = max(float(m[key]) for m in nodes)
        if nodes:
            timing["nodes_from_cache"] = sum(float(m["cached"]) for m in nodes)
        received = self.server.accepted + self.server.refused
        stats = {
            "round": round_index,
            "clients": self._clients,
            "bytes_up_per_client": up / max(received, 1),
            "dropped_clients": self._dropped,
            "refused_updates": self.server.refused,
            "lost_nodes": lost,
            **timing,
        }
        self.progress.traffic.append(stats)
        self.progress.next_round += 1
        self._trained = True
        arrays = ArrayRecord(torch_state_dict={k: v.detach() for k, v in self.model.named_parameters()})
        return arrays, MetricRecord({k: float(v) for k, v in stats.items()})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # validation is central (evaluate)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn``: validation with early stopping, then the checkpoint."""
        if not self._trained:
            return None
        self._trained = False
        progress, round_index = self.progress, self.progress.next_round - 1
        valid = None
        if (round_index + 1) % self.eval_step == 0:
            valid = _evaluate(self.evaluator, self.valid_data)
            progress.curve.append({"epoch": float(round_index), **valid})
            logging.getLogger().info("round %d: valid %s", round_index, valid)
            if improved(valid[self.metric], progress.best, self.bigger):
                progress.best, progress.best_round, progress.waited = valid[self.metric], round_index, 0
                progress.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            else:
                progress.waited += 1
                progress.stopped = progress.waited >= self.patience
        progress.traffic[-1]["seconds"] = time.perf_counter() - self._started  # validation included
        if progress.stopped or (round_index + 1) % self.checkpoint_every == 0:
            self.save()
        return None if valid is None else MetricRecord(valid)


def server_checkpoint(run_config: Mapping[str, Any], config: Any) -> Path | None:
    """``server-checkpoint`` of the run config: ``""`` is ``<checkpoint_dir>/<run name>/flower-server.pt``
    (the in-process engine's run folder: the same config resumes), ``"off"`` keeps none."""
    where = str(run_config.get("server-checkpoint", "")).strip()
    if where.lower() in {"off", "none", "false", "0"}:
        return None
    if where:
        return Path(where)
    from recbole_lumos.federated.runner import run_name

    return Path(str(config["checkpoint_dir"])) / run_name(config) / "flower-server.pt"


def run_server(grid: Grid, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The federated protocol over ``grid`` with Flower's round loop; returns metrics, rounds,
    traffic, and what failed (``lost_nodes``, ``refused_updates``, ``dropped_clients``)."""
    from recbole.utils import get_trainer

    config, model, train_data, valid_data, test_data = experiment(run_config)
    model = copy.deepcopy(model)
    evaluator = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    # The registry of clients, in the in-process order: the server knows who they are and how
    # many training positions each has (the most weight an update may claim), never their items.
    stride = int(config["window_stride"]) if config["window_stride"] else None
    partition = ClientPartition(training_histories(train_data._dataset), int(config["MAX_ITEM_LIST_LENGTH"]), stride)
    timeout = float(run_config.get("round-timeout", 3600))
    shards, parts = _node_shards(grid, timeout)
    settings = {
        "min-replies": run_config.get("min-replies", 1),
        "min-reply-fraction": run_config.get("min-reply-fraction", 0.0),
        "checkpoint-every": run_config.get("checkpoint-every", 1),
        "checkpoint": server_checkpoint(run_config, config),
        "shards": shards,
        "parts": parts,
        "timeout": timeout,
        "partition": partition,
    }
    strategy = LumosStrategy(config, model, evaluator, valid_data, settings)
    resumed = strategy.resume()
    rounds = int(config["epochs"])
    if strategy.progress.next_round < rounds and not strategy.progress.stopped:
        initial = ArrayRecord(torch_state_dict={k: v.detach() for k, v in model.named_parameters()})
        strategy.start(
            grid=PollingGrid(grid),
            initial_arrays=initial,
            num_rounds=rounds - strategy.progress.next_round,
            timeout=timeout,
            evaluate_fn=strategy.evaluate,
        )
    progress = strategy.progress
    if progress.best_state is not None:
        model.load_state_dict(progress.best_state)
    return {
        "best_valid_result": _evaluate(evaluator, valid_data),
        "test_result": _evaluate(evaluator, test_data),
        "best_round": progress.best_round,
        "rounds": progress.next_round,
        "valid_curve": progress.curve,
        "traffic": progress.traffic,
        "lost_nodes": progress.lost_nodes,
        "refused_updates": int(sum(t["refused_updates"] for t in progress.traffic)),
        "dropped_clients": int(sum(t["dropped_clients"] for t in progress.traffic)),
        "resumed": resumed,
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
