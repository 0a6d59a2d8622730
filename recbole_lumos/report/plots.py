"""The comparison's figures (PNG, matplotlib from the ``plot`` extra).

* ``valid_curve.png``: valid NDCG@20 per epoch (central) and per round (federated),
  mean over seeds, one line per model;
* ``accuracy_vs_bytes.png``: test HR@20 against total megabytes sent per client
  (federated models), with central models as dashed reference lines;
* ``ablation.png``: test NDCG@20 of LUMOS and its ablations, mean ± std over seeds;
* ``exposure_vs_attack_ratio.png``: test ER@10 against ``attack_ratio``, one line per
  (model, attack, aggregator), starting from the same model and aggregator without
  attack (drawn at ratio 0), mean ± std over seeds.

Without matplotlib the figures are skipped with one log line; the tables never are.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from recbole_lumos.report.stats import mean_std, total_bytes_per_client

ABLATION_ORDER = ("LUMOS", "LUMOS-noF", "LUMOS-noR", "LUMOS-randC", "LUMOS-noC", "LUMOS-central")


def mean_curve(runs: Sequence[dict], metric: str = "ndcg@20") -> tuple[list[int], list[float]]:
    """Validation curve averaged over seeds at the epochs/rounds every seed reached."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for point in run.get("valid_curve") or []:
            if metric in point:
                by_step[int(point["epoch"])].append(float(point[metric]))
    steps = sorted(step for step, values in by_step.items() if len(values) == len(runs))
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def exposure_lines(runs: Sequence[dict], metric: str = "er@10") -> dict[tuple[str, str, str], list[tuple]]:
    """``(model, attack, aggregator) -> [(attack_ratio, mean, std), ...]`` by ratio, from runs that measured
    ``metric``; the runs without attack are the ratio-0 point of every attack line of their model and aggregator."""
    values: dict[tuple[str, str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if metric not in run.get("test_result", {}):
            continue
        config = run.get("config") or {}
        attack = str(config.get("attack") or "none")
        ratio = 0.0 if attack == "none" else float(config.get("attack_ratio") or 0.0)
        key = (str(run["model"]), attack, str(config.get("aggregator") or "fedavg"))
        values[key][ratio].append(float(run["test_result"][metric]))
    lines = {}
    for (model, attack, aggregator), by_ratio in values.items():
        if attack == "none":
            continue
        points = dict(by_ratio)
        baseline = values.get((model, "none", aggregator), {}).get(0.0)
        if baseline:
            points.setdefault(0.0, baseline)
        lines[(model, attack, aggregator)] = [(r, *mean_std(points[r])) for r in sorted(points)]
    for (model, attack, aggregator), by_ratio in values.items():  # no attacked line: the baseline alone
        if attack == "none" and not any(k[0] == model and k[2] == aggregator for k in lines):
            lines[(model, attack, aggregator)] = [(0.0, *mean_std(by_ratio[0.0]))]
    return lines


def write_plots(folder: Path, rows: Sequence) -> list[Path]:
    """Write the figures for ``rows`` (:class:`~recbole_lumos.report.comparison.ModelSummary`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.getLogger().info("matplotlib is not installed (pip install -e '.[plot]'): no plots written")
        return []
    written = []
    rows = [row for row in rows if row.runs]

    # 1. Valid NDCG@20 over training: a panel for central runs (per epoch) and one for
    # federated runs (per round), each drawn only when some model has such runs.
    kinds = [(federated, unit) for federated, unit in ((False, "epoch"), (True, "round"))
             if any(bool(row.runs[0].get("federated")) == federated for row in rows)] or [(False, "epoch")]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds) + 0.5, 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (federated, unit) in zip(axes, kinds, strict=True):
        for row in rows:
            if bool(row.runs[0].get("federated")) != federated:
                continue
            steps, values = mean_curve(row.runs)
            if steps:
                ax.plot([s + 1 for s in steps], values, marker="o", markersize=2, label=row.model)
        ax.set_xlabel(unit)
        ax.set_title("central" if not federated else "federated")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {ax.get_title()} run with a validation curve", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    axes[0].set_ylabel("valid NDCG@20 (mean over seeds)")
    fig.tight_layout()
    written.append(folder / "valid_curve.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # 2. Accuracy against bytes sent per client.
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        hr = mean_std(row.values("test", "hit@20"))
        if row.runs[0].get("federated"):
            sent = [total_bytes_per_client(r) / 1e6 for r in row.runs]
            if not any(math.isnan(s) for s in sent):
                ax.errorbar(sum(sent) / len(sent), hr[0], yerr=hr[1], fmt="o", capsize=3, label=row.model)
                continue
        ax.axhline(hr[0], linestyle="--", linewidth=1, color="grey")
        ax.annotate(f"{row.model} (central)", (0, hr[0]), xycoords=("axes fraction", "data"), fontsize=7,
                    va="bottom", color="grey")
    ax.set_xlabel("MB sent per client over the run (up + down)")
    ax.set_ylabel("test HR@20")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # central-only comparisons have no labelled federated point
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(folder / "accuracy_vs_bytes.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # 3. Ablation bars.
    ablations = [row for name in ABLATION_ORDER for row in rows if row.model == name]
    if len(ablations) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        stats = [mean_std(row.values("test", "ndcg@20")) for row in ablations]
        ax.bar([row.model for row in ablations], [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4)
        ax.set_ylabel("test NDCG@20 (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        written.append(folder / "ablation.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    # 4. Exposure of the targets against the share of malicious clients.
    lines = exposure_lines([run for row in rows for run in row.runs])
    if lines:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        # A colour per (attack, aggregator), a line style per model; one setting: a colour per model too.
        settings = sorted({(attack, aggregator) for _, attack, aggregator in lines})
        models = sorted({model for model, _, _ in lines})
        palette = plt.get_cmap("tab10" if len(settings) <= 10 else "tab20")
        for (model, attack, aggregator), points in sorted(lines.items()):
            ratios, means, stds = zip(*points, strict=True)
            colour = settings.index((attack, aggregator)) if len(settings) > 1 else models.index(model)
            ax.errorbar(ratios, means, yerr=stds, marker="o", markersize=3, capsize=3,
                        color=palette(colour % palette.N),
                        linestyle=("-", "--", ":", "-.")[models.index(model) % 4],
                        label=f"{model}, {attack}, {aggregator}")
        ax.set_xlabel("attack_ratio (malicious clients per benign client)")
        ax.set_ylabel("test ER@10 (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(folder / "exposure_vs_attack_ratio.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
