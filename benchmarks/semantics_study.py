"""The LUMOS-semantics study (issue 33): item encoder x text-aware item table x LUMOS cell, to early stop.

Cells are named ``<encoder>-<item_text>-<LUMOS cell>`` (``minilm-fusion-nc4-aug0.1-l0.03``),
plus ``FedSASRec``, ``FedSASRec-T-init`` and ``FedSASRec-T-fusion`` (FedSASRec with a
text-aware table) and ``...-randViews`` (views written from random item embeddings).
Every (cell, seed) is one ``run_recbole_lumos.py`` run into ``<out>/<cell>/``; a run
whose JSON exists is skipped, an interrupted one resumes from its ``last.ckpt``.

    python benchmarks/semantics_study.py --dataset ml-100k --out saved/semantics/ml-100k --seeds 2020 2021
    python benchmarks/semantics_study.py --dataset ml-100k --out saved/semantics/ml-100k --table

``--previous DIR`` copies the runs of the issue-16 study (``results/lumos-study``) that
this grid repeats exactly: ``FedSASRec`` and the ``lm-none-*`` cells (the language
model's embeddings, no text table: the configuration those runs used).

The table gives, per cell: best valid NDCG@20 (the selection criterion), test HR@20 and
NDCG@20, the paired gain in test NDCG@20 over FedSASRec and over FedSASRec-T (the
``item_text`` that validation picks) with paired t-tests, and the rounds each run takes
to reach FedSASRec's mean best validation NDCG@20.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from lumos_study import run_one, run_path, stored_runs  # noqa: E402

from recbole_lumos.report.budgets import budget_table, rounds_to_reach  # noqa: E402
from recbole_lumos.report.stats import mean_std, paired_t_test  # noqa: E402

BASELINE = "FedSASRec"
LUMOS_CELLS = {
    # every key spelt out: a data set's own LUMOS file (properties/dataset/<dataset>/LUMOS.yaml) must not change a cell
    "nc1-aug0-l0.1": ["--lumos_num_counterfactuals=1", "--lumos_aug_weight=0.0", "--lambda_cl=0.1"],  # the defaults
    "nc4-aug0.1-l0.03": ["--lumos_num_counterfactuals=4", "--lumos_aug_weight=0.1", "--lambda_cl=0.03"],
    "nc16-aug0-l0.03": ["--lumos_num_counterfactuals=16", "--lumos_aug_weight=0.0", "--lambda_cl=0.03"],
    # Where the first seeds pointed (ml-100k, 2020: the views as next-item data under fusion): more of it, and
    # F's inferred continuations as next-item targets too.
    "nc4-aug0.3-l0.03": ["--lumos_num_counterfactuals=4", "--lumos_aug_weight=0.3", "--lambda_cl=0.03"],
    "nc4-aug0.1FRt-l0.03": [
        "--lumos_num_counterfactuals=4",
        "--lumos_aug_weight=0.1",
        "--lumos_aug_views=[F,R]",
        "--lumos_aug_f_targets=True",
        "--lambda_cl=0.03",
    ],
}
ENCODERS = {"lm": ["--lumos_item_encoder=lm"], "minilm": ["--lumos_item_encoder=all-MiniLM-L6-v2"]}
ITEM_TEXT = ("none", "init", "fusion")


def cells() -> dict[str, list[str]]:
    """Cell name -> overrides."""
    grid = {BASELINE: ["--model=FedSASRec"]}
    for text in ("init", "fusion"):
        grid[f"{BASELINE}-T-{text}"] = ["--model=FedSASRec", f"--item_text={text}", *ENCODERS["minilm"]]
    for encoder, encoder_flags in ENCODERS.items():
        for text in ITEM_TEXT:
            for name, flags in LUMOS_CELLS.items():
                cell = f"{encoder}-{text}-{name}"
                grid[cell] = ["--model=LUMOS", *encoder_flags, f"--item_text={text}", *flags]
                grid[f"{cell}-randViews"] = ["--model=LUMOS-randViews", *grid[cell][1:]]
    return grid


def fedsasrec_t(runs: dict[str, dict[int, dict]]) -> str | None:
    """The FedSASRec-T cell validation picks (higher mean best valid NDCG@20 over shared seeds)."""
    options = {c: runs[c] for c in (f"{BASELINE}-T-init", f"{BASELINE}-T-fusion") if runs.get(c)}
    if not options:
        return None
    common = set.intersection(*(set(r) for r in options.values())) or set.union(*(set(r) for r in options.values()))

    def score(cell: str) -> float:
        seeds = [s for s in common if s in options[cell]]
        return sum(float(options[cell][s]["best_valid_result"]["ndcg@20"]) for s in seeds) / max(1, len(seeds))

    return max(options, key=score)


def _gain(got: dict[int, dict], base: dict[int, dict]) -> tuple[str, str]:
    common = [s for s in sorted(got) if s in base]
    if len(common) < 2:
        if len(common) == 1:
            s = common[0]
            return f"{100 * (got[s]['test_result']['ndcg@20'] / base[s]['test_result']['ndcg@20'] - 1):+.1f}%", ""
        return "", ""
    ours = [float(got[s]["test_result"]["ndcg@20"]) for s in common]
    theirs = [float(base[s]["test_result"]["ndcg@20"]) for s in common]
    _, p = paired_t_test(ours, theirs)
    return f"{100 * (sum(ours) / sum(theirs) - 1):+.1f}%", f"{p:.3f}"


HEADLINE = (
    BASELINE,
    f"{BASELINE}-T-init",
    f"{BASELINE}-T-fusion",
    "lm-none-nc1-aug0-l0.1",
    "lm-none-nc4-aug0.1-l0.03",
    "minilm-none-nc4-aug0.1-l0.03",
    "minilm-fusion-nc4-aug0.1-l0.03",
    "minilm-fusion-nc4-aug0.1-l0.03-randViews",
    "minilm-fusion-nc4-aug0.1FRt-l0.03",
)
"""The README's rows: the baselines, the paper's reading (lm, none), and the chosen cell with its random views."""


def table(out: Path, grid: dict[str, list[str]], only: tuple[str, ...] | None = None) -> str:
    runs = stored_runs(out, grid)
    t_cell = fedsasrec_t(runs)
    base = runs.get(BASELINE, {})
    target = None
    if base:
        target = sum(float(r["best_valid_result"]["ndcg@20"]) for r in base.values()) / len(base)
    lines = [
        f"FedSASRec-T is `{t_cell}` (picked by validation). Rounds to target: the first validation at or above "
        f"FedSASRec's mean best valid NDCG@20 ({target:.4f})." if target and t_cell else "",
        "",
        "| cell | seeds | valid NDCG@20 | test HR@20 | test NDCG@20 | vs FedSASRec | p | vs FedSASRec-T | p "
        "| rounds to target | rounds | CPU s | test NDCG@20 per seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in only or grid:
        got = runs.get(cell, {})
        if not got:
            continue
        seeds = sorted(got)

        def shown(key: str, split: str = "test_result", got: dict = got, seeds: list[int] = seeds) -> str:
            mean, std = mean_std([float(got[s][split][key]) for s in seeds])
            return f"{mean:.4f} ± {std:.4f}"

        g1, p1 = _gain(got, base) if cell != BASELINE else ("", "")
        g2, p2 = _gain(got, runs[t_cell]) if t_cell and cell != t_cell else ("", "")
        reach = ""
        if target:
            reached = [rounds_to_reach(got[s], target) for s in seeds]
            hit = [r for r in reached if r is not None]
            reach = f"{sum(hit) / len(hit):.0f}" if hit else "never"
            reach += f" ({len(hit)}/{len(seeds)})" if hit and len(hit) < len(seeds) else ""
        rounds = sum(int(got[s].get("epochs") or 0) for s in seeds) / len(seeds)
        cpu = sum(float(got[s].get("cpu_time_s") or 0) for s in seeds) / len(seeds)
        per_seed = ", ".join(f"{s}: {got[s]['test_result']['ndcg@20']:.4f}" for s in seeds)
        lines.append(
            f"| {cell} | {','.join(map(str, seeds))} | {shown('ndcg@20', 'best_valid_result')} | {shown('hit@20')} "
            f"| {shown('ndcg@20')} | {g1} | {p1} | {g2} | {p2} | {reach} | {rounds:.0f} | {cpu:.0f} | {per_seed} |"
        )
    return "\n".join(lines)


def import_previous(previous: Path, out: Path, grid: dict[str, list[str]]) -> None:
    """Copy the earlier study's runs that these cells repeat (``FedSASRec``; ``X`` -> ``lm-none-X``)."""
    for old in sorted(p for p in previous.iterdir() if p.is_dir()):
        cell = BASELINE if old.name == BASELINE else f"lm-none-{old.name}"
        if cell not in grid:
            continue
        for path in sorted((old / "runs").glob("*-seed*.json")):
            target = run_path(out, cell, grid[cell], int(json.loads(path.read_text())["seed"]))
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                print(f"{cell}: {path.name} from {old}", flush=True)


def publish(out: Path, target: Path, grid: dict[str, list[str]]) -> None:
    """``target/table.md``, ``target/budgets.md`` and ``target/runs/<cell>/runs/*.json`` (the finished runs)."""
    runs = stored_runs(out, grid)
    for cell, by_seed in runs.items():
        for seed in by_seed:
            source = run_path(out, cell, grid[cell], seed)
            copy = run_path(target / "runs", cell, grid[cell], seed)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, copy)
    (target / "table.md").write_text(table(out, grid) + "\n")
    (target / "headline.md").write_text(table(out, grid, HEADLINE) + "\n")
    (target / "budgets.md").write_text(budget_table(runs, BASELINE) + "\n")
    print(f"published {sum(len(r) for r in runs.values())} runs of {len(runs)} cells to {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default="../shared/datasets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022, 2023, 2024])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="cells to run, in this order (default: all)")
    parser.add_argument("--previous", type=Path, help="an issue-16 study folder to take repeated runs from")
    parser.add_argument("--table", action="store_true", help="print the table of stored runs and exit")
    parser.add_argument("--budgets", action="store_true", help="print test at 50/100/200 rounds and exit")
    parser.add_argument(
        "--publish", type=Path, metavar="DIR", help="write table.md and budgets.md and copy the finished runs to DIR"
    )
    args = parser.parse_args()
    grid = cells()
    if args.previous:
        import_previous(args.previous, args.out, grid)
    if args.publish:
        publish(args.out, args.publish, grid)
        return
    if args.table or args.budgets:
        if args.table:
            print(table(args.out, grid))
        if args.budgets:
            print(budget_table(stored_runs(args.out, grid), BASELINE))
        return
    order = args.only or list(grid)
    unknown = [c for c in order if c not in grid]
    if unknown:
        parser.error(f"unknown cells {unknown}; cells are {', '.join(grid)}")
    todo = [
        (cell, grid[cell], seed)
        for seed in args.seeds
        for cell in order
        if not run_path(args.out, cell, grid[cell], seed).exists()
    ]
    print(f"{len(todo)} runs to do", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, args.out, c, o, s, args.data_path, args.dataset) for c, o, s in todo]
        for future in futures:
            cell, seed, seconds, code = future.result()
            print(f"{cell} seed {seed}: {'ok' if code == 0 else f'exit {code}'} in {seconds:.0f} s", flush=True)
    print(table(args.out, grid))


if __name__ == "__main__":
    main()
