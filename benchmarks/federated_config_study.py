"""How the federated recipe trades accuracy, time and bytes: a grid of configs, each to early stop.

Each row is one full ``run_model`` (the same path as the command line) of ``--model``
with ``--config_files`` plus the row's overrides. The table gives rounds, best valid
and test metrics, wall time and traffic; it is how the default federated recipe in
``properties/overall.yaml`` was chosen.

    python benchmarks/federated_config_study.py --dataset=ml-100k --data_path=../shared/datasets \\
        --config_files=properties/experiment/cpu-small.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GRID: dict[str, dict] = {
    # FedAvg as first configured: one local Adam step per client, all clients, global += aggregate.
    "fedavg-adam-all": {"client_fraction": 1.0, "local_optimizer": "adam", "local_lr": 0.001, "server_optimizer": "sgd",
                        "server_lr": 1.0},
    # FedAdam (Reddi et al. 2021): the aggregated local SGD step is Adam's pseudo-gradient.
    "fedadam-64": {"clients_per_round": 64, "local_optimizer": "sgd", "local_lr": 1.0, "server_optimizer": "adam",
                   "server_lr": 0.003},
    "fedadam-256": {"clients_per_round": 256, "local_optimizer": "sgd", "local_lr": 1.0, "server_optimizer": "adam",
                    "server_lr": 0.003},
    "fedadam-256-lr0.01": {"clients_per_round": 256, "local_optimizer": "sgd", "local_lr": 1.0,
                           "server_optimizer": "adam", "server_lr": 0.01},
    "fedadam-all": {"client_fraction": 1.0, "local_optimizer": "sgd", "local_lr": 1.0, "server_optimizer": "adam",
                    "server_lr": 0.003},
    # Local Adam (a sign-like step per client) under a FedAdam server.
    "fedadam-64-local-adam": {"clients_per_round": 64, "local_optimizer": "adam", "local_lr": 0.001,
                              "server_optimizer": "adam", "server_lr": 0.003},
    # FedAvgM: heavy-ball momentum on the server.
    "fedavgm-256": {"clients_per_round": 256, "local_optimizer": "sgd", "local_lr": 1.0,
                    "server_optimizer": "momentum", "server_lr": 1.0},
}


def _row(name: str, result) -> list[str]:
    traffic = result.traffic
    total = sum(t["bytes_up_round"] + t["bytes_down_round"] for t in traffic)
    return [
        name,
        str(traffic[0]["clients"] if traffic else ""),
        str(result.epochs),
        f"{result.best_valid_result['ndcg@20']:.4f}",
        f"{result.test_result['hit@20']:.4f}",
        f"{result.test_result['ndcg@20']:.4f}",
        f"{result.wall_time_s:.0f}",
        f"{result.bytes_up_per_client:,.0f}",
        f"{total / 1e9:.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default="../shared/datasets")
    parser.add_argument("--model", default="FedSASRec")
    parser.add_argument("--config_files", default="properties/experiment/cpu-small.yaml")
    parser.add_argument("--rows", default=",".join(GRID), help="comma-separated names from the grid")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--eval_step", type=int, default=5)
    parser.add_argument("--stopping_step", type=int, default=10, help="validations without improvement")
    parser.add_argument("--max_rounds", type=int, default=1500)
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()

    from recbole_lumos.quick_start import run_model

    header = ["config", "clients / round", "rounds", "best valid NDCG@20", "test HR@20", "test NDCG@20",
              "wall (s)", "up B / client / round", "total GB sent"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in args.rows.split(","):
        overrides = {
            "data_path": args.data_path,
            "seed": args.seed,
            "epochs": args.max_rounds,
            "federated_eval_step": args.eval_step,
            "federated_stopping_step": args.stopping_step,
            "show_progress": False,
            "checkpoint_dir": f"saved/config-study/{name}",
            **GRID[name],
        }
        result = run_model(args.model, args.dataset, config_files=args.config_files.split(), overrides=overrides)
        lines.append("| " + " | ".join(_row(name, result)) + " |")
        print(lines[-1], flush=True)
        print(json.dumps({"config": name, **GRID[name]}), flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
