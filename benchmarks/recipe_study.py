"""The federated recipe study: one table over stored runs, every configuration tried.

Each configuration is run with the command line into its own results folder (so a
killed study resumes: finished runs are skipped), for example::

    python run_recbole_lumos.py --model=FedSASRec --dataset=ml-1m --data_path=../shared/datasets \\
        --config_files=properties/experiment/cpu-small.yaml --seeds=1 --local_loss=ce \\
        --results_dir=saved/recipe/ml-1m-ce

and this script tabulates the folders given as ``label=folder`` (a folder holds
``runs/<Model>-seed<N>.json``): rounds, the best validation (the selection
criterion), test metrics, time, bytes, and when the run first reached 95% of its
final valid NDCG@20 (its best), in rounds and in wall seconds (the run's wall time
scaled by the share of rounds, so validations are spread evenly).

    python benchmarks/recipe_study.py "sampled (today)=results/ml-1m-comparison" ml-1m-ce=saved/recipe/ml-1m-ce

``--gap federated=FOLDER:MODEL central=FOLDER:MODEL`` prints instead the paired gap of test NDCG@20
between two sets of runs over their common seeds (per seed, mean ± std, relative gap, paired t-test).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRIC = "ndcg@20"


def reach(curve: list[dict[str, float]], share: float) -> float | None:
    """First round whose valid NDCG@20 is at least ``share`` of the curve's best."""
    if not curve:
        return None
    best = max(point[METRIC] for point in curve)
    return next(point["epoch"] + 1 for point in curve if point[METRIC] >= share * best)


def rows(label: str, folder: Path, model: str | None) -> list[list[str]]:
    out = []
    for path in sorted((folder / "runs").glob("*.json")):
        run = json.loads(path.read_text())
        if "test_result" not in run or (model and run.get("model") != model):
            continue
        rounds = int(run.get("epochs") or 0)
        at95 = reach(run.get("valid_curve") or [], 0.95)
        wall = float(run.get("wall_time_s") or 0)
        curve = run.get("valid_curve") or []
        best_round = max(curve, key=lambda p: p[METRIC])["epoch"] + 1 if curve else None
        out.append(
            [
                label,
                str(run.get("model")),
                str(run.get("seed")),
                str(rounds),
                f"{run['best_valid_result'][METRIC]:.4f}" + (f" (r{best_round:.0f})" if best_round else ""),
                f"{run['test_result']['hit@20']:.4f}",
                f"{run['test_result'][METRIC]:.4f}",
                f"{wall:.0f}",
                f"{run.get('cpu_time_s') or 0:.0f}",
                "" if at95 is None else f"{at95:.0f}",
                "" if at95 is None or not rounds else f"{wall * at95 / rounds:.0f}",
                f"{(run.get('bytes_up_per_client') or 0) / 1e3:.0f}",
            ]
        )
    return out


def _test_by_seed(spec: str) -> tuple[str, dict[int, float]]:
    label, _, where = spec.partition("=")
    folder, _, model = where.rpartition(":")
    out = {}
    for path in sorted((Path(folder) / "runs").glob(f"{model}-seed*.json")):
        run = json.loads(path.read_text())
        if run.get("model") == model and "test_result" in run:
            out[int(run["seed"])] = float(run["test_result"][METRIC])
    return label, out


def gap_table(candidate: str, reference: str) -> str:
    """Per-seed test NDCG@20 of two sets of runs, their means and the paired relative gap."""
    from recbole_lumos.report.stats import mean_std, paired_t_test, relative_gain

    (name_a, a), (name_b, b) = _test_by_seed(candidate), _test_by_seed(reference)
    seeds = sorted(set(a) & set(b))
    xs, ys = [a[s] for s in seeds], [b[s] for s in seeds]
    (ma, sa), (mb, sb) = mean_std(xs), mean_std(ys)
    t, p = paired_t_test(xs, ys)
    per_seed = ", ".join(f"{s}: {a[s]:.4f} / {b[s]:.4f}" for s in seeds)
    return "\n".join(
        [
            f"| {name_a} | {name_b} | seeds | gap | t | p | per seed ({name_a} / {name_b}) |",
            "|---|---|---|---|---|---|---|",
            f"| {ma:.4f} ± {sa:.4f} | {mb:.4f} ± {sb:.4f} | {len(seeds)} | {100 * relative_gain(ma, mb):+.1f}% "
            f"| {t:.2f} | {p:.3f} | {per_seed} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="label=folder (with --gap: label=folder:Model, twice)")
    parser.add_argument("--gap", action="store_true", help="paired test NDCG@20 gap of two sets of runs")
    parser.add_argument("--model", default=None, help="only this model's runs (e.g. FedSASRec)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    if args.gap:
        table = gap_table(*args.folders)
        print(table)
        if args.out:
            args.out.write_text(table + "\n")
        return
    header = [
        "recipe",
        "model",
        "seed",
        "rounds",
        "best valid NDCG@20 (round)",
        "test HR@20",
        "test NDCG@20",
        "wall (s)",
        "CPU (s)",
        "rounds to 95% of best valid",
        "wall s to 95%",
        "up KB / client / round",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for spec in args.folders:
        label, _, folder = spec.partition("=")
        lines += ["| " + " | ".join(row) + " |" for row in rows(label, Path(folder), args.model)]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
