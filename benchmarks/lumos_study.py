"""The LUMOS study (issue 16): a grid of LUMOS settings against FedSASRec, run to early stop.

Every cell is a set of command-line overrides; every (cell, seed) is one run of
``run_recbole_lumos.py`` into ``<out>/<cell>/`` (the comparison store), so a killed
study resumes: a run whose ``runs/<Model>-seed<N>.json`` exists is skipped, and an
interrupted one restarts from its ``last.ckpt``. Runs go seed by seed (every cell at
the first seed, then every cell at the next), so a partial study is balanced.

    python benchmarks/lumos_study.py --out saved/lumos-study --seeds 2020 2021 2022 --jobs 2
    python benchmarks/lumos_study.py --out saved/lumos-study --table    # the table so far

The table gives, per cell, the mean ± std of the best valid NDCG@20 (the selection
criterion) and of the test metrics over the seeds it has, the paired gain in test
NDCG@20 against FedSASRec over the common seeds with a paired t-test, and CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recbole_lumos.report.budgets import budget_table, merge_at_budgets, reach_table
from recbole_lumos.report.stats import mean_std, paired_t_test

BASE_CONFIG = "properties/experiment/cpu-small.yaml"
BASE = [f"--config_files={BASE_CONFIG}", "--show_progress=False"]
GRID_STORE = Path("results/lumos-study/runs")
"""The ml-100k grid's published runs: ``--confirm`` takes its best cells by validation from here."""
BASELINE = "FedSASRec"
TODAY = "nc1-aug0-l0.1"
"""LUMOS's defaults before the study: one counterfactual, no augmentation, lambda_cl 0.1."""


def grid() -> dict[str, list[str]]:
    """Cell name -> overrides. n_c x view augmentation x lambda_cl, then the cells trends asked for."""
    cells = {BASELINE: ["--model=FedSASRec"]}
    for n_c in (1, 4, 16):
        for aug in (0.0, 0.5):
            for lam in (0.1, 0.5):
                cells[f"nc{n_c}-aug{aug:g}-l{lam:g}"] = [
                    "--model=LUMOS",
                    f"--lumos_num_counterfactuals={n_c}",
                    f"--lumos_aug_weight={aug}",
                    f"--lambda_cl={lam}",
                ]
    # Where the first seeds pointed: a lighter contrastive weight and augmentation, and item negatives
    # (the further client-local negatives) at the lighter weight.
    cells["nc1-aug0.5-l0"] = ["--model=LUMOS", "--lumos_aug_weight=0.5", "--lambda_cl=0"]
    for n_c in (1, 4, 16):
        cells[f"nc{n_c}-aug0-l0.03"] = ["--model=LUMOS", f"--lumos_num_counterfactuals={n_c}", "--lambda_cl=0.03"]
    # The grid the first seeds pointed to: n_c x a light augmentation (0.1) x the two lightest weights.
    for n_c in (1, 4, 16):
        for lam in (0.03, 0.1):
            cells[f"nc{n_c}-aug0.1-l{lam:g}"] = [
                "--model=LUMOS",
                f"--lumos_num_counterfactuals={n_c}",
                "--lumos_aug_weight=0.1",
                f"--lambda_cl={lam}",
            ]
    for n_c in (4, 16):
        cells[f"nc{n_c}-aug0-l0.1-items16"] = cells[f"nc{n_c}-aug0-l0.1"] + ["--lumos_item_negatives=16"]
    paper = [f"--config_files={BASE_CONFIG},properties/experiment/paper-protocol.yaml"]
    cells[f"paper-{BASELINE}"] = cells[BASELINE] + paper
    cells["paper-LUMOS"] = ["--model=LUMOS", *paper]
    return cells


def baseline_of(cell: str) -> str:
    """The FedSASRec cell a cell is compared with: the one trained on the same recipe."""
    return f"paper-{BASELINE}" if cell.startswith("paper-") else BASELINE


def model_of(overrides: list[str]) -> str:
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("--model="))


def run_path(out: Path, cell: str, overrides: list[str], seed: int) -> Path:
    return out / cell / "runs" / f"{model_of(overrides)}-seed{seed}.json"


def run_one(
    out: Path, cell: str, overrides: list[str], seed: int, data_path: str, dataset: str
) -> tuple[str, int, float, int]:
    log = out / cell / f"seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "run_recbole_lumos.py", f"--dataset={dataset}", *BASE, *overrides]
    command += [f"--data_path={data_path}"]
    command += [f"--seed={seed}", "--seeds=1", f"--results_dir={out / cell}"]
    start = time.time()
    with log.open("a") as handle:
        code = subprocess.call(
            command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    return cell, seed, time.time() - start, code


def stored_runs(out: Path, cells: dict[str, list[str]]) -> dict[str, dict[int, dict]]:
    """Cell -> seed -> finished run."""
    runs: dict[str, dict[int, dict]] = {}
    for cell, overrides in cells.items():
        for path in sorted((out / cell / "runs").glob(f"{model_of(overrides)}-seed*.json")):
            run = json.loads(path.read_text())
            if "test_result" in run:
                runs.setdefault(cell, {})[int(run["seed"])] = run
    return runs


def best_by_validation(out: Path, cells: dict[str, list[str]], count: int) -> list[str]:
    """The ``count`` LUMOS cells with the highest mean best-valid NDCG@20 (the selection rule; test
    numbers play no part), among the cells run on the most seeds, over the seeds they share."""
    runs = {c: r for c, r in stored_runs(out, cells).items() if not c.startswith("paper-") and c != BASELINE}
    if not runs:
        return []
    most = max(len(r) for r in runs.values())
    runs = {c: r for c, r in runs.items() if len(r) == most}
    common = set.intersection(*(set(r) for r in runs.values()))
    score = {
        c: sum(float(r[s]["best_valid_result"]["ndcg@20"]) for s in common) / max(1, len(common))
        for c, r in runs.items()
    }
    return sorted(score, key=score.get, reverse=True)[:count]


def table(out: Path, cells: dict[str, list[str]], only: list[str] | None = None) -> str:
    runs = stored_runs(out, cells)
    lines = [
        "| cell | seeds | valid NDCG@20 | test HR@20 | test NDCG@20 | test gain | t | p | rounds | CPU s "
        "| test NDCG@20 per seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in only or cells:
        got = runs.get(cell, {})
        if not got:
            continue
        seeds = sorted(got)

        def column(key: str, split: str = "test_result", of: dict = got, seeds: list[int] = seeds) -> list[float]:
            return [float(of[s][split][key]) for s in seeds]

        def shown(values: list[float]) -> str:
            mean, std = mean_std(values)
            return f"{mean:.4f} ± {std:.4f}"

        valid = shown(column("ndcg@20", "best_valid_result"))
        gain = t = p = ""
        base = runs.get(baseline_of(cell), {})
        common = [s for s in seeds if s in base]
        if cell != baseline_of(cell) and len(common) >= 2:
            ours = [float(got[s]["test_result"]["ndcg@20"]) for s in common]
            theirs = [float(base[s]["test_result"]["ndcg@20"]) for s in common]
            gain = f"{100 * (sum(ours) / sum(theirs) - 1):+.1f}%"
            stat, pvalue = paired_t_test(ours, theirs)
            t, p = f"{stat:.2f}", f"{pvalue:.3f}"
        rounds = sum(int(got[s].get("epochs") or 0) for s in seeds) / len(seeds)
        cpu = sum(float(got[s].get("cpu_time_s") or 0) for s in seeds) / len(seeds)
        lines.append(
            f"| {cell} | {','.join(map(str, seeds))} | {valid} | {shown(column('hit@20'))} | "
            f"{shown(column('ndcg@20'))} | {gain} | {t} | {p} | {rounds:.0f} | {cpu:.0f} | "
            + ", ".join(f"{s_}: {got[s_]['test_result']['ndcg@20']:.4f}" for s_ in seeds)
            + " |"
        )
    return "\n".join(lines)


def merge_budgets(out: Path, reruns: Path, cells: dict[str, list[str]]) -> None:
    """Give the runs of ``out`` the ``at_budgets`` of their reruns in ``reruns`` (see
    ``merge_at_budgets``): for runs stored before round budgets were recorded."""
    for cell, by_seed in stored_runs(reruns, cells).items():
        for seed, rerun in by_seed.items():
            path = run_path(out, cell, cells[cell], seed)
            if not path.exists():
                print(f"{cell} seed {seed}: no stored run in {out}", flush=True)
                continue
            try:
                merged = merge_at_budgets(json.loads(path.read_text()), rerun)
            except ValueError as error:
                print(f"{cell} seed {seed}: not merged: {error}", flush=True)
                continue
            path.write_text(json.dumps(merged, indent=1) + "\n")  # as the runner writes it
            print(f"{cell} seed {seed}: at_budgets merged", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("saved/lumos-study"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022, 2023, 2024])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="cells to run (default: all)")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument(
        "--confirm",
        type=int,
        metavar="N",
        help="run FedSASRec, today's LUMOS and the N best cells by validation of the ml-100k grid "
        f"({GRID_STORE}) only: the confirmation on another data set",
    )
    parser.add_argument("--data_path", default="../shared/datasets")
    parser.add_argument("--table", action="store_true", help="print the table of stored runs and exit")
    parser.add_argument(
        "--headline", type=int, metavar="N", help="print FedSASRec, today's LUMOS and the N best cells by validation"
    )
    parser.add_argument(
        "--budgets",
        action="store_true",
        help="print NDCG@20 at 50, 100 and 200 rounds, and the rounds and bytes to reach 90%% and 95%% "
        "of FedSASRec's final validation, for the stored runs (with --headline N: its cells only), and exit",
    )
    parser.add_argument(
        "--merge_budgets",
        type=Path,
        metavar="RERUNS",
        help="copy test at each round budget from reruns (a --out folder of the same cells and seeds) into "
        "the stored runs of --out, each only if its rerun reproduced the run exactly, and exit",
    )
    args = parser.parse_args()
    cells = grid()
    if args.merge_budgets:
        merge_budgets(args.out, args.merge_budgets, cells)
        return
    if args.table:
        print(table(args.out, cells))
        return
    best = best_by_validation(args.out, cells, args.headline) if args.headline else []
    headline = [BASELINE, *dict.fromkeys([TODAY, *best])] if args.headline else []
    if args.budgets:
        runs = stored_runs(args.out, cells)
        if headline:
            runs = {cell: runs[cell] for cell in headline if cell in runs}
        for paper in (False, True):
            chosen = {c: r for c, r in runs.items() if c.startswith("paper-") == paper}
            if chosen:
                baseline = f"paper-{BASELINE}" if paper else BASELINE
                print(budget_table(chosen, baseline), reach_table(chosen, baseline), sep="\n\n", end="\n\n")
        return
    if args.headline:
        print(table(args.out, cells, headline))
        return
    only = args.only
    if args.confirm:
        only = [BASELINE, *dict.fromkeys([TODAY, *best_by_validation(GRID_STORE, cells, args.confirm)])]
        print(f"confirming on {args.dataset}: {', '.join(only)}", flush=True)
    chosen = {c: o for c, o in cells.items() if not only or c in only}
    todo = [
        (cell, overrides, seed)
        for seed in args.seeds
        for cell, overrides in chosen.items()
        if not run_path(args.out, cell, overrides, seed).exists()
    ]
    print(f"{len(todo)} runs to do", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, args.out, c, o, s, args.data_path, args.dataset) for c, o, s in todo]
        for future in futures:
            cell, seed, seconds, code = future.result()
            print(f"{cell} seed {seed}: {'ok' if code == 0 else f'exit {code}'} in {seconds:.0f} s", flush=True)
    print(table(args.out, cells, only))


if __name__ == "__main__":
    main()
