"""A side-by-side comparison: every (model, seed) run stored as it finishes, then tables and plots.

One folder per comparison holds ``runs/<model>-seed<seed>.json`` (a run's
:class:`~recbole_lumos.quick_start.RunResult`, or its error), ``results.csv``,
``results.md`` and the plots. A rerun of the same command finds the finished runs
and skips them, so an interrupted comparison resumes where it stopped.

A row is a model, or a cell of a matrix (``FedSASRec[attack=bandwagon,aggregator=median]``,
see :mod:`recbole_lumos.cli`). Runs that measured exposure add ``ER@K`` columns, runs
with local DP an epsilon column (the budget against the server, mean over seeds).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recbole_lumos.report.plots import write_plots
from recbole_lumos.report.stats import mean_std, paired_t_test, relative_gain, time_cell, total_bytes_per_client

METRICS = ("hit@10", "hit@20", "ndcg@10", "ndcg@20")
EXPOSURE_PREFIX = "er@"
KEY_METRIC = "ndcg@20"
SIGNIFICANCE = 0.05


@dataclass
class ModelSummary:
    """One row of the comparison: a model's runs over seeds."""

    model: str
    seeds: list[int] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def values(self, split: str, metric: str) -> list[float]:
        key = "test_result" if split == "test" else "best_valid_result"
        return [float(run[key][metric]) for run in self.runs if metric in run[key]]

    def mean_std(self, split: str, metric: str) -> tuple[float, float]:
        return mean_std(self.values(split, metric))

    def by_seed(self, split: str, metric: str) -> dict[int, float]:
        key = "test_result" if split == "test" else "best_valid_result"
        return {int(run["seed"]): float(run[key][metric]) for run in self.runs if metric in run[key]}


class ComparisonStore:
    """The folder of one comparison: finished runs, failures and the outputs written from them."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.runs_dir = self.folder / "runs"

    def _path(self, model: str, seed: int) -> Path:
        return self.runs_dir / f"{model}-seed{seed}.json"

    def finished(self, model: str, seed: int) -> dict | None:
        path = self._path(model, seed)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return None if "error" in record else record

    def save_run(self, model: str, seed: int, result: dict) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._path(model, seed).with_suffix(".part")
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        tmp.replace(self._path(model, seed))  # a run is either stored whole or not at all

    def save_failure(self, model: str, seed: int, error: str) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._path(model, seed).write_text(json.dumps({"model": model, "seed": seed, "error": error}) + "\n")

    def summaries(self, models: Sequence[str], seeds: Sequence[int]) -> list[ModelSummary]:
        """Rows in the order of ``models``, from whatever is stored for ``seeds``."""
        rows = []
        for model in models:
            row = ModelSummary(model)
            for seed in seeds:
                path = self._path(model, seed)
                if not path.is_file():
                    continue
                record = json.loads(path.read_text())
                if "error" in record:
                    row.failures.append(f"seed {seed}: {record['error']}")
                else:
                    row.runs.append(record)
                    row.seeds.append(seed)
            rows.append(row)
        return rows


def _cell(mean: float, std: float) -> str:
    return "" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def exposure_metrics(rows: Sequence[ModelSummary]) -> list[str]:
    """The ``er@K`` keys some run's test result holds, by K."""
    keys = {k for row in rows for run in row.runs for k in run["test_result"] if k.startswith(EXPOSURE_PREFIX)}
    return sorted(keys, key=lambda k: int(k[len(EXPOSURE_PREFIX) :]))


def epsilons(row: ModelSummary) -> list[float]:
    """Each run's epsilon against the server (local DP runs only)."""
    return [float(run["privacy"]["epsilon"]) for run in row.runs if run.get("privacy")]


def _epsilon_cell(row: ModelSummary) -> str:
    values = epsilons(row)
    if not values:
        return ""
    delta = row.runs[0]["privacy"]["delta"]
    return f"{statistics.fmean(values):.3g} (δ {delta:g})"


def results_rows(rows: Sequence[ModelSummary]) -> list[dict[str, Any]]:
    """Flat records for ``results.csv``: mean and std of every metric on valid and test, plus costs."""
    records = []
    for row in rows:
        record: dict[str, Any] = {"model": row.model, "seeds": " ".join(map(str, row.seeds))}
        for split in ("valid", "test"):
            for metric in METRICS:
                mean, std = row.mean_std(split, metric) if row.runs else (math.nan, math.nan)
                record[f"{split}_{metric}_mean"], record[f"{split}_{metric}_std"] = mean, std
        for metric in exposure_metrics(rows):
            mean, std = row.mean_std("test", metric) if row.runs else (math.nan, math.nan)
            record[f"test_{metric}_mean"], record[f"test_{metric}_std"] = mean, std
        if any(epsilons(r) for r in rows):
            values = epsilons(row)
            record["dp_epsilon"] = statistics.fmean(values) if values else math.nan
            record["dp_epsilon_amplified"] = (
                statistics.fmean(float(r["privacy"]["epsilon_amplified"]) for r in row.runs if r.get("privacy"))
                if values
                else math.nan
            )
            record["dp_delta"] = row.runs[0]["privacy"]["delta"] if values else math.nan
        runs = row.runs
        record["wall_time_s"] = statistics.fmean(r["wall_time_s"] for r in runs) if runs else math.nan
        cpu = [r.get("cpu_time_s") for r in runs]
        record["cpu_time_s"] = statistics.fmean(cpu) if cpu and None not in cpu else math.nan
        record["time_complete"] = all(r.get("time_complete", True) for r in runs)
        epochs = [r["epochs"] for r in runs if r.get("epochs") is not None]
        record["epochs_or_rounds"] = statistics.fmean(epochs) if epochs else math.nan
        sent = [r["bytes_up_per_client"] for r in runs if r.get("bytes_up_per_client") is not None]
        record["bytes_up_per_client_round"] = statistics.fmean(sent) if sent else math.nan
        totals = [total_bytes_per_client(r) for r in runs] if sent else []
        record["bytes_per_client_total"] = statistics.fmean(totals) if totals else math.nan
        record["train_mode"] = runs[0].get("train_mode", "") if runs else ""
        record["federated"] = runs[0].get("federated", "") if runs else ""
        record["generation"] = ((runs[0].get("generation") or {}).get("mode") or "") if runs else ""
        record["failures"] = "; ".join(row.failures)
        records.append(record)
    return records


def gains_table(rows: Sequence[ModelSummary], candidate: str, metric: str = KEY_METRIC) -> str:
    """Relative gain of ``candidate`` over every other row on test ``metric``, with a paired t-test.
    Empty when there is nothing to compare: no runs of ``candidate``, or no other row with runs."""
    by_name = {row.model: row for row in rows}
    if candidate not in by_name or not by_name[candidate].runs:
        return ""
    if not any(row.runs for row in rows if row.model != candidate):
        return ""
    ours = by_name[candidate].by_seed("test", metric)
    lines = [
        f"| {candidate} vs | seeds | {candidate} {metric} | baseline {metric} | relative gain | t | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.model == candidate or not row.runs:
            continue
        theirs = row.by_seed("test", metric)
        common = sorted(set(ours) & set(theirs))
        t, _ = paired_t_test([ours[s] for s in common], [theirs[s] for s in common])
        mean_a, mean_b, gain, p = _paired_cells(ours, theirs, relative=True)
        t_cell = "" if math.isnan(t) else f"{t:.2f}"
        lines.append(f"| {row.model} | {len(common)} | {mean_a} | {mean_b} | {gain} | {t_cell} | {p} |")
    return "\n".join(lines) + f"\n\n`*`: paired two-sided t-test over seeds, p < {SIGNIFICANCE}."


def split_label(label: str) -> tuple[str, str]:
    """``"FedSASRec[attack=bandwagon,aggregator=median]"`` -> ``("FedSASRec", "attack=bandwagon,aggregator=median")``;
    a plain model name -> ``(name, "")``."""
    if label.endswith("]") and "[" in label:
        model, cell = label[:-1].split("[", 1)
        return model, cell
    return label, ""


def _paired_cells(ours: dict[int, float], theirs: dict[int, float], relative: bool) -> list[str]:
    """Mean of each side over the common seeds, the gain (relative or absolute) and the paired t-test."""
    common = sorted(set(ours) & set(theirs))
    a, b = [ours[s] for s in common], [theirs[s] for s in common]
    if not common:
        return ["", "", "", ""]
    mean_a, mean_b = mean_std(a)[0], mean_std(b)[0]
    t, p = paired_t_test(a, b)
    mark = " *" if not math.isnan(p) and p < SIGNIFICANCE else ""
    gain = f"{relative_gain(mean_a, mean_b):+.1%}" if relative else f"{mean_a - mean_b:+.4f}"
    return [f"{mean_a:.4f}", f"{mean_b:.4f}", gain + mark, "" if math.isnan(p) else f"{p:.3f}"]


def matrix_gains_table(rows: Sequence[ModelSummary], candidate: str, metric: str = KEY_METRIC) -> str:
    """Cell by cell of a matrix: ``candidate[cell]`` against every other model's ``[cell]``, paired over
    seeds, on test ``metric`` (relative gain) and on the first exposure metric (difference: exposure is
    near zero without an attack, so a ratio says little). Empty without matrix rows to pair."""
    by_cell: dict[str, dict[str, ModelSummary]] = {}
    for row in rows:
        model, cell = split_label(row.model)
        if cell and row.runs:
            by_cell.setdefault(cell, {})[model] = row
    exposure = exposure_metrics(rows)[:1]
    header = f"| cell | {candidate} vs | seeds | {candidate} {metric} | baseline {metric} | gain | p |"
    rule = "|---|---|---|---|---|---|---|"
    if exposure:
        name = exposure[0].upper()
        header += f" {candidate} {name} | baseline {name} | difference | p |"
        rule += "---|---|---|---|"
    lines = [header, rule]
    for cell, models in by_cell.items():
        if candidate not in models:
            continue
        ours = models[candidate]
        for model, theirs in models.items():
            if model == candidate:
                continue
            seeds = len(set(ours.seeds) & set(theirs.seeds))
            cells = [cell, model, str(seeds)]
            cells += _paired_cells(ours.by_seed("test", metric), theirs.by_seed("test", metric), relative=True)
            for key in exposure:
                cells += _paired_cells(ours.by_seed("test", key), theirs.by_seed("test", key), relative=False)
            lines.append("| " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return ""
    return "\n".join(lines) + f"\n\n`*`: paired two-sided t-test over seeds, p < {SIGNIFICANCE}."


def markdown_table(rows: Sequence[ModelSummary]) -> str:
    """``results.md``'s main table: test and valid metrics (mean ± std over seeds) and costs."""
    exposure = exposure_metrics(rows)
    private = any(epsilons(row) for row in rows)
    header = ["model", "seeds", *[f"test {m}" for m in METRICS], *[f"test {m.upper()}" for m in exposure]]
    header += [f"valid {m}" for m in METRICS]
    header += ["ε (local DP)"] if private else []
    header += ["epochs / rounds", "wall time (s)", "CPU time (s)", "MB / client", "views"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, record in zip(rows, results_rows(rows), strict=True):
        if not row.runs:  # failed, or not run yet (a comparison still in progress)
            status, reason = ("failed", row.failures[0]) if row.failures else ("none yet", "not run yet")
            lines.append("| " + " | ".join([row.model, status, reason.replace("|", "/")]) + " |")
            continue
        cells = [row.model, ",".join(map(str, row.seeds))]
        cells += [_cell(*row.mean_std("test", m)) for m in METRICS]
        cells += [_cell(*row.mean_std("test", m)) for m in exposure]
        cells += [_cell(*row.mean_std("valid", m)) for m in METRICS]
        cells += [_epsilon_cell(row)] if private else []
        cells.append(f"{record['epochs_or_rounds']:.1f}")
        cells += [time_cell(row.runs, "wall_time_s"), time_cell(row.runs, "cpu_time_s")]
        total = record["bytes_per_client_total"]
        cells.append("" if math.isnan(total) else f"{total / 1e6:.2f}")
        cells.append(record["generation"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_text(rows: Sequence[ModelSummary]) -> str:
    records = results_rows(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else ["model"])
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def write_outputs(store: ComparisonStore, models: Sequence[str], seeds: Sequence[int], candidate: str = "LUMOS") -> str:
    """Write ``results.csv``, ``results.md`` and the plots; return the Markdown."""
    rows = store.summaries(models, seeds)
    store.folder.mkdir(parents=True, exist_ok=True)
    (store.folder / "results.csv").write_text(csv_text(rows))
    text = markdown_table(rows)
    gains = gains_table(rows, candidate)
    if gains:
        text += "\n\n" + gains
    per_cell = matrix_gains_table(rows, candidate)
    if per_cell:
        text += "\n\n" + per_cell
    (store.folder / "results.md").write_text(text + "\n")
    write_plots(store.folder, rows)
    return text
