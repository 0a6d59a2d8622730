"""Does the fast default lose accuracy? The reference and the default, same rounds, same seeds.

(a) reference: clients one by one (``client_batch: 1``), full-softmax cross-entropy,
    dense uploads;
(b) the engine's default (``properties/overall.yaml``): packed cohorts, ``sampled_ce``,
    sparse item-row uploads.

Everything else (clients per round, server optimiser, rounds, seed) is the same. Each
run trains for exactly ``--rounds`` rounds (no early stopping) and is tested on its
best-validation checkpoint (results measured before 2026-11-27 used the last round's
model; see the erratum in the results file). Prints a table and ``ndcg@20 ratio: b/a`` per seed and
on average.

    python benchmarks/federated_parity.py --dataset=ml-100k --data_path=../shared/datasets --rounds=100
"""

from __future__ import annotations

import argparse
import statistics

REFERENCE = {"client_batch": 1, "local_loss": "ce", "sparse_upload": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default="../shared/datasets")
    parser.add_argument("--config_files", default="properties/experiment/cpu-small.yaml")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--eval_step", type=int, default=10)
    parser.add_argument("--seeds", default="2020")
    args = parser.parse_args()

    from recbole_lumos.quick_start import run_model

    header = ["way", "seed", "rounds", "test HR@20", "test NDCG@20", "wall (s)", "up B / client / round"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ratios = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        ndcg = {}
        for way, extra in (("reference", REFERENCE), ("default", {})):
            overrides = {
                "data_path": args.data_path,
                "seed": seed,
                "epochs": args.rounds,
                "federated_eval_step": args.eval_step,
                "federated_stopping_step": args.rounds,  # never stop early: same rounds for both
                "show_progress": False,
                "checkpoint_dir": f"saved/parity/{way}",
                **extra,
            }
            result = run_model("FedSASRec", args.dataset, config_files=args.config_files.split(), overrides=overrides)
            ndcg[way] = result.test_result["ndcg@20"]
            cells = [way, str(seed), str(result.epochs), f"{result.test_result['hit@20']:.4f}", f"{ndcg[way]:.4f}",
                     f"{result.wall_time_s:.0f}", f"{result.bytes_up_per_client:,.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        ratios.append(ndcg["default"] / ndcg["reference"])
        print(f"seed {seed}: ndcg@20 ratio {ratios[-1]:.3f}", flush=True)
    print("\n".join(lines))
    print(f"ndcg@20 ratio: {statistics.fmean(ratios):.3f}")


if __name__ == "__main__":
    main()
