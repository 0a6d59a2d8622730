"""Seconds per federated round: the in-process engine vs Flower with two local SuperNodes.

Runs the same config (FedSASRec, ml-100k, ``properties/experiment/cpu-small.yaml``,
validation every round) three ways and prints ``| way | rounds | s / round | ratio |``:

* ``in-process``: :func:`recbole_lumos.quick_start.run_model` (Lightning engine). A round is
  the time between two rounds' starts (local training, aggregation, validation, checkpoints).
* ``flower``: ``flower-superlink`` and two ``flower-supernode`` processes in insecure mode on
  localhost (Flower's deployment engine, no Ray), then ``flwr run flower_app``. A round is the
  ServerApp's own clock (``traffic[i]["seconds"]``: send, the nodes' ClientApp processes,
  aggregation, validation). Each node keeps its prepared data in its node cache.
* ``flower, no node cache``: the same with ``node-cache = "off"``: every ClientApp process
  (Flower 1.42 starts one per message) rebuilds the node's data from the dataset files.

Round 0 is left out of every mean (it builds caches and warms up). The ratio is each way's
seconds per round over the in-process engine's, so a busy machine shifts all rows alike.

    python benchmarks/flower_round.py --rounds 5 --write results/flower-round-ml-100k.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flwr, flower-superlink, flower-supernode of this environment


def overrides(args: argparse.Namespace, checkpoint_dir: Path) -> dict:
    return {
        "data_path": str(Path(args.data_path).resolve()),
        "epochs": args.rounds,
        "federated_eval_step": 1,
        "federated_stopping_step": 1000,
        "clients_per_round": args.clients_per_round,
        "checkpoint_dir": str(checkpoint_dir),
        "show_progress": False,
    }


# ------------------------------------------------------------------ in-process
def in_process_rounds(args: argparse.Namespace, work: Path) -> list[float]:
    """Seconds of rounds 0..R-2 (start to next start) of an in-process run."""
    from recbole_lumos.federated.callbacks import AggregationCallback
    from recbole_lumos.quick_start import run_model

    starts: list[float] = []
    original = AggregationCallback.on_train_epoch_start

    def timed(self, trainer, pl_module):
        starts.append(time.perf_counter())
        return original(self, trainer, pl_module)

    AggregationCallback.on_train_epoch_start = timed
    argv, sys.argv = sys.argv, [sys.argv[0]]  # RecBole reads --key=value from sys.argv
    try:
        run_model(
            args.model,
            args.dataset,
            config_files=[str(Path(args.config_files).resolve())],
            overrides=overrides(args, work / "in-process"),
        )
    finally:
        AggregationCallback.on_train_epoch_start = original
        sys.argv = argv
    return [b - a for a, b in zip(starts, starts[1:], strict=False)]


# ---------------------------------------------------------------------- Flower
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@contextlib.contextmanager
def local_deployment(work: Path, nodes: int):
    """A SuperLink and ``nodes`` SuperNodes on localhost; yields the environment for ``flwr``."""
    home = work / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    link = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = {**os.environ, "FLWR_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    logs, procs = [], []

    def start(name: str, command: list[str]) -> None:
        log = open(work / f"{name}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        # Own session: stopping it stops the processes it started (SuperExec, ClientApps).
        procs.append(
            subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    try:
        start("superlink", [str(BIN / "flower-superlink"), "--insecure", "--port", str(link)])
        wait_for_port(link)
        for i in range(nodes):
            start(
                f"supernode-{i}",
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f"partition-id={i} num-partitions={nodes}",
                ],
            )
        yield env
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in logs:
            log.close()


def flower_rounds(args: argparse.Namespace, work: Path, node_cache: str) -> tuple[list[float], dict]:
    """Per-round seconds from the ServerApp's clock, and its result."""
    work.mkdir(parents=True, exist_ok=True)
    result_file = work / "flower-result.json"
    run_toml = work / "run.toml"
    run_toml.write_text(
        "\n".join(
            [
                f'model = "{args.model}"',
                f'dataset = "{args.dataset}"',
                f'config-files = "{Path(args.config_files).resolve()}"',
                f"overrides = '{json.dumps(overrides(args, work / 'checkpoints'))}'",
                f'result-file = "{result_file}"',
                f'node-cache = "{node_cache}"',
                "",
            ]
        )
    )
    with local_deployment(work, nodes=2) as env:
        time.sleep(3)  # let both SuperNodes register before the ServerApp lists them
        command = [str(BIN / "flwr"), "run", "flower_app", "bench", "--stream", "--run-config", str(run_toml)]
        with open(work / "flwr-run.log", "w") as log:
            done = subprocess.run(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout
            )
        if done.returncode or not result_file.is_file():
            tail = (work / "flwr-run.log").read_text()[-3000:]
            raise RuntimeError(f"flwr run failed ({done.returncode}); see {work}:\n{tail}")
    result = json.loads(result_file.read_text())
    return [t["seconds"] for t in result["traffic"]], result


# ------------------------------------------------------------------------ main
def mean_after_first(seconds: list[float]) -> float:
    return statistics.fmean(seconds[1:]) if len(seconds) > 1 else seconds[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="FedSASRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-path", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--config-files", default=str(REPO / "properties" / "experiment" / "cpu-small.yaml"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients-per-round", type=int, default=64)
    parser.add_argument(
        "--ways",
        default="in-process,flower-no-cache,flower",
        help="comma separated: in-process, flower-no-cache, flower",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch/OpenMP threads of every process (OMP_NUM_THREADS); default: torch's (one per core)",
    )
    parser.add_argument(
        "--superexec-poll",
        type=float,
        default=None,
        help="seconds between a SuperNode's SuperExec checks for tasks (FLWR_SUPEREXEC_TASK_POLL_INTERVAL;"
        " Flower's default: 1)",
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds for one flwr run")
    parser.add_argument("--work", default=None, help="folder for logs, checkpoints and caches (default: a temp dir)")
    parser.add_argument("--write", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.superexec_poll:  # read by the SuperNodes' SuperExec
        os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(args.superexec_poll)
    if args.threads:  # before torch starts its thread pool; the Flower processes inherit it
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="flower-round-"))
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]

    measured: dict[str, list[float]] = {}
    results: dict[str, dict] = {}
    for way in ways:
        started = time.perf_counter()
        if way == "in-process":
            measured[way] = in_process_rounds(args, work)
        elif way == "flower-no-cache":
            measured[way], results[way] = flower_rounds(args, work / way, node_cache="off")
        elif way == "flower":
            measured[way], results[way] = flower_rounds(args, work / way, node_cache="")
        else:
            parser.error(f"unknown way {way!r}")
        print(
            f"{way}: {[round(s, 2) for s in measured[way]]} s per round ({time.perf_counter() - started:.0f} s in all)",
            flush=True,
        )

    names = {
        "in-process": "in-process",
        "flower-no-cache": "Flower, 2 SuperNodes, no node cache",
        "flower": "Flower, 2 SuperNodes, node cache",
    }
    base = mean_after_first(measured["in-process"]) if "in-process" in measured else None
    lines = ["| way | rounds | s / round | ratio |", "|---|---:|---:|---:|"]
    for way, seconds in measured.items():
        per_round = mean_after_first(seconds)
        ratio = f"{per_round / base:.2f}" if base else "-"
        timed = f"{max(len(seconds) - 1, 1)} of {len(seconds) + (way == 'in-process')}"
        lines.append(f"| {names[way]} | {timed} | {per_round:.2f} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    breakdown = flower_breakdown(results)
    print(breakdown)
    for way, result in results.items():
        curve = [round(p.get("ndcg@20", float("nan")), 4) for p in result["valid_curve"]]
        print(f"{way}: valid ndcg@20 per round {curve}")
    if args.write:
        write_markdown(Path(args.write), args, table, breakdown, measured)
        print(f"written to {args.write}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def flower_breakdown(results: dict) -> str:
    """Where a Flower round goes (means over rounds 1..): the ServerApp's wait for every
    reply, and inside it the slowest node's ClientApp process (start-up, data, training)."""
    lines = [
        "| way | wait for replies | ClientApp start-up | node data | local training | Flower polling + transfer"
        " | validation + rest |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for way, result in results.items():
        rounds = result["traffic"][1:] or result["traffic"]

        def mean(key: str, rounds=rounds) -> float:
            return statistics.fmean(float(t.get(key, float("nan"))) for t in rounds)

        node = mean("node_startup_s") + mean("node_prepare_s") + mean("node_train_s")
        lines.append(
            f"| {way} | {mean('nodes_s'):.2f} | {mean('node_startup_s'):.2f} | {mean('node_prepare_s'):.2f} |"
            f" {mean('node_train_s'):.2f} | {mean('nodes_s') - node:.2f} | {mean('seconds') - mean('nodes_s'):.2f} |"
        )
    return "\n".join(lines)


def write_markdown(path: Path, args, table: str, breakdown: str, measured: dict) -> None:
    cores = os.cpu_count()
    load = os.getloadavg()
    text = [
        f"# Seconds per federated round on {args.dataset}: in-process vs Flower",
        "",
        f"Measured {dt.date.today().isoformat()} with `python benchmarks/flower_round.py --rounds {args.rounds}"
        f"{f' --threads {args.threads}' if args.threads else ''}"
        f"{f' --superexec-poll {args.superexec_poll}' if args.superexec_poll else ''}`:"
        f" {args.model}, `{Path(args.config_files).name}`, {args.clients_per_round} clients per round,"
        " validation (RecBole full ranking) every round.",
        f"Machine: {cores}-core CPU, {platform.python_implementation()} {platform.python_version()}, shared with"
        f" other jobs (load average {load[0]:.1f} at the end); absolute seconds vary 2-5x with the load,"
        " so compare the ratios.",
        "Flower: one `flower-superlink` and two `flower-supernode` processes (insecure, localhost, deployment"
        " engine without Ray); the nodes share the same CPU cores.",
        "Round 0 is left out of the means.",
        "",
        table,
        "",
        "Where a Flower round goes (seconds, means over rounds 1..; the slowest of the two nodes):",
        "",
        breakdown,
        "",
        "Per-round seconds (round 0 first):",
        "",
    ]
    text += [f"- {way}: {', '.join(f'{s:.1f}' for s in seconds)}" for way, seconds in measured.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
