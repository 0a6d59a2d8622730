"""One full-participation federated round, two ways, in the same process family.

(a) reference: clients one by one, full-softmax cross-entropy, dense uploads;
(b) the engine's default (``properties/overall.yaml`` and the dataset's YAML): cohorts trained
    together in one packed pass, ``local_loss`` (``--local_loss`` overrides it) and sparse
    item-embedding uploads where the loss allows them.

Each way runs in a fresh subprocess so that its peak RSS is its own. Prints a table
(seconds per round, clients/s, bytes up per client, peak RSS, estimated FLOPs and the
time those FLOPs need at this machine's measured matmul speed), then ``speedup: a/b``:
of CPU seconds on a CPU (wall seconds count a shared machine's other jobs), of wall seconds
on a GPU (``--device=cuda``: the work is the device's; the clock stops after a synchronize).

    python benchmarks/federated_round.py --dataset=ml-1m --data_path=../shared/datasets
    python benchmarks/federated_round.py --dataset=ml-1m --data_path=../shared/datasets --device=cuda --max_clients=512
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _setup(dataset: str, data_path: str, overrides: dict, device: str = "cpu"):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_lumos.config import build_config
    from recbole_lumos.data.partition import ClientPartition, training_histories

    if device != "cpu":
        overrides = {**overrides, "use_gpu": True, "device": device}
    config = build_config("FedSASRec", dataset, overrides={"data_path": data_path, **overrides})
    init_seed(config["seed"], True)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = config.model_class(config, train_data._dataset).to(device)
    partition = ClientPartition(training_histories(train_data._dataset), config["MAX_ITEM_LIST_LENGTH"])
    return config, model, partition


def _flops(model, partition, clients, loss: str, num_negatives: int, local_epochs: int) -> float:
    """Forward+backward (3x forward) FLOPs of the local epochs, counting matmuls only."""
    d = model.hidden_size
    inner = model.inner_size
    n_layers = model.n_layers
    total = 0.0
    for index in clients:
        client = partition.clients[index]
        windows, length = client.inputs.shape
        tokens = windows * length
        per_token = n_layers * (2 * 4 * d * d + 2 * 2 * length * d + 2 * 2 * d * inner)
        candidates = model.n_items if loss == "ce" else (num_negatives + 1 if loss == "sampled_ce" else 2)
        total += tokens * per_token + client.num_positions * 2 * d * candidates
    return 3.0 * total * local_epochs


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _matmul_gflops(device: str = "cpu") -> float:
    size = 1024 if device == "cpu" else 8192
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    _synchronize(device)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0:
        a @ b
        n += 1
        _synchronize(device)
    return n * 2 * size**3 / (time.perf_counter() - start) / 1e9


def run_way(
    way: str,
    dataset: str,
    data_path: str,
    max_clients: int | None,
    local_loss: str | None = None,
    device: str = "cpu",
) -> dict:
    from recbole_lumos.data.partition import RoundSampler, collate_cohort
    from recbole_lumos.federated.aggregators import build_aggregator
    from recbole_lumos.federated.local_update import LocalSettings, LocalTrainer

    config, model, partition = _setup(dataset, data_path, {"local_loss": local_loss} if local_loss else {}, device)
    settings = LocalSettings.from_config(config)
    client_batch = int(config["client_batch"])
    if way == "reference":
        settings = LocalSettings(
            local_epochs=settings.local_epochs,
            optimizer=settings.optimizer,
            lr=settings.lr,
            loss="ce",
            sparse_upload=False,
        )
        client_batch = 1
    trainer = LocalTrainer(model, settings)
    clients = list(range(len(partition)))[: max_clients or None]
    # The engine's own round sampler: full participation, cohorts bucketed by number of windows.
    sampler = RoundSampler(
        len(clients),
        clients_per_round=len(clients),
        client_batch=client_batch,
        seed=0,
        lengths=[partition.clients[c].inputs.size(0) for c in clients],
    )
    shapes = {n: p.shape for n, p in model.named_parameters()}
    aggregator = build_aggregator("fedavg", shapes, config)
    generator = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)
    bytes_up = []
    _synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    global_params = trainer.global_params()
    for members in sampler:
        cohort = collate_cohort([(clients[c], partition.clients[clients[c]]) for c in members]).to(device)
        for update in trainer.cohort_updates(global_params, cohort, generator, one_by_one=client_batch == 1):
            aggregator.add(update)
            bytes_up.append(update.num_bytes())
    aggregate = aggregator.result()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(aggregate[name])
    _synchronize(device)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    flops = _flops(model, partition, clients, settings.loss, settings.num_negatives, settings.local_epochs)
    return {
        "way": way,
        "clients": len(clients),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "clients_per_s": len(clients) / seconds,
        "bytes_up_per_client": sum(bytes_up) / len(bytes_up),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gflop": flops / 1e9,
        "loss": settings.loss,
        "client_batch": client_batch,
        "sparse": settings.uploads_sparse,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data_path", default="dataset/")
    parser.add_argument("--max_clients", type=int, default=None, help="only the first N clients (quick check)")
    parser.add_argument(
        "--local_loss", choices=["ce", "sampled_ce", "bce"], help="the engine's loss (default: the dataset's own)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (speedup from wall seconds)")
    parser.add_argument("--way", choices=["reference", "default"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        row = run_way(args.way, args.dataset, args.data_path, args.max_clients, args.local_loss, args.device)
        print(json.dumps(row))
        return
    rows = []
    for way in ("reference", "default"):
        cmd = [sys.executable, __file__, f"--dataset={args.dataset}", f"--data_path={args.data_path}", f"--way={way}"]
        if args.max_clients:
            cmd.append(f"--max_clients={args.max_clients}")
        if args.local_loss:
            cmd.append(f"--local_loss={args.local_loss}")
        cmd.append(f"--device={args.device}")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    gflops = _matmul_gflops(args.device)
    print(
        f"dataset {args.dataset}, {rows[0]['clients']} clients, device {args.device}, "
        f"matmul peak {gflops:.0f} GFLOP/s (fp32), torch threads {torch.get_num_threads()}"
    )
    print(
        "| way | loss | client_batch | sparse upload | s / round | CPU s / round | clients/s | bytes up / client | "
        "peak RSS (MB) | GFLOP | FLOP-limited s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['way']} | {r['loss']} | {r['client_batch']} | {r['sparse']} | {r['seconds']:.1f} | "
            f"{r['cpu_seconds']:.1f} | "
            f"{r['clients_per_s']:.0f} | {r['bytes_up_per_client']:,.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['gflop']:.0f} | {r['gflop'] / gflops:.1f} |"
        )
    # CPU seconds (one thread): wall seconds also count the other jobs of a shared machine. On a GPU the work
    # is the device's and the host mostly waits, so wall seconds are the measure there.
    cpu_ratio, wall_ratio = rows[0]["cpu_seconds"] / rows[1]["cpu_seconds"], rows[0]["seconds"] / rows[1]["seconds"]
    if args.device == "cpu":
        print(f"speedup: {cpu_ratio:.2f} (wall: {wall_ratio:.2f})")
    else:
        print(f"speedup: {wall_ratio:.2f} (wall seconds on {args.device}; CPU seconds: {cpu_ratio:.2f})")


if __name__ == "__main__":
    main()
