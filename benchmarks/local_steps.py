"""What several local steps cost: one round of sampled clients, 1..k local epochs, per path.

One local epoch trains on the packed path (one forward/backward for the whole cohort);
more go through the functional path (each client on its own weights, one after the other). Prints seconds per round and
per local step for each (loss, local_epochs), and the per-step ratio to one packed step.

    python benchmarks/local_steps.py --dataset=ml-1m --data_path=../shared/datasets \
        --config_files=properties/experiment/cpu-small.yaml --epochs=1,2,4 --losses=sampled_ce,ce
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data_path", default="../shared/datasets")
    parser.add_argument("--config_files", default="properties/experiment/cpu-small.yaml")
    parser.add_argument("--clients", type=int, default=512)
    parser.add_argument("--epochs", default="1,2,4")
    parser.add_argument("--losses", default="sampled_ce,ce")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_lumos.config import build_config
    from recbole_lumos.data.partition import (
        ClientPartition,
        IndexedPartition,
        RoundSampler,
        collate_cohort,
        training_histories,
    )
    from recbole_lumos.federated.local_update import LocalSettings, LocalTrainer

    files = [f for f in args.config_files.split(",") if f]
    config = build_config("FedSASRec", args.dataset, files, {"data_path": args.data_path})
    init_seed(config["seed"], True)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = config.model_class(config, train_data._dataset)
    partition = ClientPartition(training_histories(train_data._dataset), config["MAX_ITEM_LIST_LENGTH"])
    windows = [c.inputs.size(0) for c in partition.clients]
    sampler = RoundSampler(
        len(partition),
        clients_per_round=min(args.clients, len(partition)),
        client_batch=int(config["client_batch"]),
        seed=int(config["seed"]),
        lengths=windows,
    )
    cohorts = [collate_cohort([IndexedPartition(partition)[i] for i in batch]) for batch in sampler]
    rows, base = [], {}
    for loss in args.losses.split(","):
        for epochs in [int(e) for e in args.epochs.split(",")]:
            settings = LocalSettings(local_epochs=epochs, optimizer="sgd", lr=0.3, loss=loss)
            trainer = LocalTrainer(model, settings)
            start = trainer.global_params()
            best = float("inf")
            for _ in range(args.repeats):
                generator = torch.Generator().manual_seed(0)
                began = time.perf_counter()
                for cohort in cohorts:
                    trainer.cohort_updates(start, cohort, generator)
                best = min(best, time.perf_counter() - began)
            base.setdefault(loss, best)
            rows.append((loss, epochs, best, best / epochs, best / epochs / base[loss]))
    print(f"| loss | local epochs | s / round ({args.clients} clients) | s / local step | per step vs 1 packed |")
    print("|---|---|---|---|---|")
    for loss, epochs, seconds, per_step, ratio in rows:
        print(f"| {loss} | {epochs} | {seconds:.2f} | {per_step:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
