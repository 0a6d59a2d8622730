"""Publish the robustness study (issue 17) from its comparison folders into ``results/robustness/``.

The study is five comparisons of the command line, each resumable on its own
(``saved/robustness/<name>``; the commands are in ``results/robustness/README.md``):

* ``ml-100k-matrix``: {FedSASRec, LUMOS} x {none, bandwagon, scaled} x {fedavg, median, norm_bound};
* ``ml-100k-ldp``: bandwagon under FedAvg with local DP at a noise multiplier chosen for epsilon ~ 8;
* ``ml-100k-noise``: ``noise_ratio`` 0.1, 0.2 and 0.3 (ratio 0 is FedSASRec's and LUMOS's runs of the
  LUMOS study, the same command without noise: ``--study``);
* ``ml-100k-ratio``: bandwagon under FedAvg at several ``attack_ratio`` values, for the plot;
* ``amazon-beauty-bandwagon``: bandwagon under FedAvg on sparse data, both models, one seed.

For each it copies ``runs/*.json`` and rewrites ``results.md`` / ``results.csv`` with the current
report code (the cell-by-cell LUMOS-vs-FedSASRec pairs included); then it writes ``noise.md`` (the
NDCG@20 drop against noise 0, paired over seeds) and ``exposure_vs_attack_ratio.png`` (every
FedAvg bandwagon run of the matrix and the ratio sweep, no-attack runs as ratio 0).

    python benchmarks/robustness_publish.py --store saved/robustness --study results/lumos-study/runs
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

from recbole_lumos.report.comparison import ComparisonStore, ModelSummary, split_label, write_outputs
from recbole_lumos.report.plots import write_plots
from recbole_lumos.report.stats import mean_std, paired_t_test, relative_gain

MODELS = ("FedSASRec", "LUMOS")
NOISE_FREE = {"FedSASRec": "FedSASRec", "LUMOS": "nc1-aug0-l0.1"}
"""The LUMOS study's cells that are each model's noise-0 runs (LUMOS's defaults at the time)."""
RUN_NAME = re.compile(r"^(?P<label>.+)-seed(?P<seed>\d+)\.json$")


def stored_labels(folder: Path) -> tuple[list[str], list[int]]:
    """The row labels (FedSASRec's rows first, cells in the order first seen) and seeds of a comparison."""
    labels: list[str] = []
    seeds: set[int] = set()
    for path in sorted((folder / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime):
        match = RUN_NAME.match(path.name)
        if match:
            if match["label"] not in labels:
                labels.append(match["label"])
            seeds.add(int(match["seed"]))
    labels.sort(key=lambda label: MODELS.index(split_label(label)[0]) if split_label(label)[0] in MODELS else 9)
    return labels, sorted(seeds)


def publish(source: Path, dest: Path) -> ComparisonStore:
    """Copy one comparison's runs and write its tables with the current report code."""
    (dest / "runs").mkdir(parents=True, exist_ok=True)
    for path in (source / "runs").glob("*.json"):
        shutil.copy2(path, dest / "runs" / path.name)
    store = ComparisonStore(dest)
    labels, seeds = stored_labels(dest)
    write_outputs(store, labels, seeds)
    for plot in dest.glob("*.png"):  # the study's one figure is written below, across comparisons
        plot.unlink()
    return store


def runs_of(folder: Path) -> list[dict]:
    return [
        run for path in sorted(folder.glob("runs/*.json")) if "test_result" in (run := json.loads(path.read_text()))
    ]


def noise_table(noise: Path, study: Path) -> str:
    """Test NDCG@20 per noise ratio and model, and its drop against the same seeds without noise."""
    lines = [
        "| model | noise_ratio | seeds | test HR@20 | test NDCG@20 | change vs noise 0 (paired) | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        clean = {int(r["seed"]): r["test_result"] for r in runs_of(study / NOISE_FREE[model])}
        by_ratio: dict[float, dict[int, dict]] = {}
        for run in runs_of(noise):
            name, cell = split_label(run.get("label") or run["model"])
            if name == model:
                ratio = float(dict(kv.split("=") for kv in cell.split(","))["noise_ratio"])
                by_ratio.setdefault(ratio, {})[int(run["seed"])] = run["test_result"]
        seeds = sorted(set().union(*(set(r) for r in by_ratio.values()))) if by_ratio else []
        rows = {0.0: {s: clean[s] for s in seeds if s in clean}, **dict(sorted(by_ratio.items()))}
        for ratio, results in rows.items():
            got = sorted(results)
            hit = mean_std([results[s]["hit@20"] for s in got])
            ndcg = mean_std([results[s]["ndcg@20"] for s in got])
            change = p = ""
            common = [s for s in got if s in rows[0.0]]
            if ratio > 0 and common:
                ours = [results[s]["ndcg@20"] for s in common]
                base = [rows[0.0][s]["ndcg@20"] for s in common]
                change = f"{relative_gain(sum(ours), sum(base)):+.1%}"
                p = f"{paired_t_test(ours, base)[1]:.3f}" if len(common) >= 2 else ""
            lines.append(
                f"| {model} | {ratio:g} | {','.join(map(str, got))} | {hit[0]:.4f} ± {hit[1]:.4f} | "
                f"{ndcg[0]:.4f} ± {ndcg[1]:.4f} | {change} | {p} |"
            )
    return "\n".join(lines)


def exposure_plot(sources: list[Path], dest: Path) -> None:
    """ER@10 against attack_ratio for FedAvg: bandwagon runs at every ratio, no-attack runs as ratio 0.

    A run that two folders both hold (the sweep's 5% seed-2020 run is the matrix's, the same command)
    is counted once."""
    runs = {}
    for folder in sources:
        for run in runs_of(folder):
            config = run.get("config") or {}
            fedavg = str(config.get("aggregator") or "fedavg") == "fedavg"
            if fedavg and str(config.get("attack")) in ("none", "bandwagon"):
                key = (run["model"], run["seed"], str(config.get("attack")), config.get("attack_ratio"))
                runs.setdefault(key, run)
    runs = list(runs.values())
    with tempfile.TemporaryDirectory() as scratch:
        written = write_plots(Path(scratch), [ModelSummary("all", runs=runs)])
        for path in written:
            if path.name == "exposure_vs_attack_ratio.png":
                shutil.copy2(path, dest / path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("saved/robustness"))
    parser.add_argument("--study", type=Path, default=Path("results/lumos-study/runs"))
    parser.add_argument("--out", type=Path, default=Path("results/robustness"))
    args = parser.parse_args()
    published = {}
    for source in sorted(p for p in args.store.iterdir() if (p / "runs").is_dir()):
        publish(source, args.out / source.name)
        published[source.name] = args.out / source.name
        print(f"{source.name}: {len(runs_of(args.out / source.name))} runs")
    if "ml-100k-noise" in published:
        (args.out / "noise.md").write_text(noise_table(published["ml-100k-noise"], args.study) + "\n")
    plotted = [published[name] for name in ("ml-100k-matrix", "ml-100k-ratio") if name in published]
    if plotted:
        exposure_plot(plotted, args.out)
    fill_readme(args.out)


def tables_of(results_md: Path) -> list[str]:
    """The Markdown tables of a ``results.md``, in order."""
    blocks, current = [], []
    for line in results_md.read_text().splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    return blocks


def fill_readme(out: Path) -> None:
    """Put the current tables between the README's ``<!-- name -->`` / ``<!-- /name -->`` markers."""
    readme = out / "README.md"
    if not readme.is_file():
        return
    tables = {}
    for name in ("ml-100k-matrix", "ml-100k-ldp", "ml-100k-ratio", "ml-100k-noise", "amazon-beauty-bandwagon"):
        if (out / name / "results.md").is_file():
            found = tables_of(out / name / "results.md")
            tables[name] = found[0]
            if name == "ml-100k-matrix" and len(found) > 1:
                tables["ml-100k-matrix-pairs"] = found[-1]
    if (out / "noise.md").is_file():
        tables["noise"] = (out / "noise.md").read_text().strip()
    text = readme.read_text()
    for name, table in tables.items():
        start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1]
    readme.write_text(text)


if __name__ == "__main__":
    main()
