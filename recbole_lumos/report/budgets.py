"""Results at fixed communication budgets: what a run would report had it stopped at round B,
and how many rounds and bytes it needs to reach a share of the baseline's final score.

Published federated results often train for a fixed number of rounds, so a model that rises
faster can look better there and tie at the end. Validation at a budget comes from the run's
``valid_curve`` (the best validation up to round B); test at a budget from ``at_budgets`` (the
best checkpoint up to round B, evaluated after training; runs stored before that field have
none). Rounds are 1-based: the validation logged at epoch ``e`` is that of round ``e + 1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from recbole_lumos.report.stats import mean_std, paired_t_test, relative_gain

Run = Mapping[str, Any]


def best_validation(
    curve: Sequence[Mapping[str, float]], budget: int, metric: str = "ndcg@20", bigger: bool = True
) -> Mapping[str, float] | None:
    """The best validation of ``curve`` up to round ``budget``, the first on ties (as Lightning's
    checkpoint keeps the first best); None before any validation."""
    seen = [point for point in curve if point["epoch"] + 1 <= budget and metric in point]
    if not seen:
        return None
    best = (max if bigger else min)(point[metric] for point in seen)
    return next(point for point in seen if point[metric] == best)


def at_budget(run: Run, budget: int, split: str = "valid", metric: str = "ndcg@20") -> float | None:
    """``split`` ``metric`` of the best model by validation up to round ``budget``.

    Valid: the best of the curve up to that round (None before the first validation). Test: the
    run's ``at_budgets`` entry (None when the run did not record one)."""
    if split == "valid":
        best = best_validation(run.get("valid_curve") or [], budget, metric)
        return None if best is None else float(best[metric])
    for entry in run.get("at_budgets") or []:
        if int(entry["rounds"]) == budget:
            return float(entry[split][metric])
    return None


def rounds_to_reach(run: Run, target: float, metric: str = "ndcg@20") -> int | None:
    """The first round whose validation ``metric`` reaches ``target`` (None if none does)."""
    for point in run.get("valid_curve") or []:
        if float(point.get(metric, float("-inf"))) >= target:
            return int(point["epoch"]) + 1
    return None


def bytes_until(run: Run, rounds: int) -> float:
    """Bytes sent up and down in the first ``rounds`` rounds, all clients together."""
    return sum(
        float(t["bytes_up_round"]) + float(t["bytes_down_round"])
        for t in run.get("traffic") or []
        if int(t["round"]) < rounds
    )


def _paired(ours: dict[int, float | None], theirs: dict[int, float | None]) -> tuple[str, str]:
    """Relative gain of the means and the paired t-test's p over the seeds both have."""
    common = [s for s in ours if ours[s] is not None and theirs.get(s) is not None]
    if len(common) < 2:
        return "", ""
    a, b = [ours[s] for s in common], [theirs[s] for s in common]
    gain = relative_gain(sum(a), sum(b))
    _, p = paired_t_test(a, b)
    return f"{100 * gain:+.1f}%", f"{p:.3f}"


def _mean(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return ""
    mean, std = mean_std(present)
    short = "" if len(present) == len(values) else f" ({len(present)}/{len(values)})"
    return f"{mean:.4f} ± {std:.4f}{short}"


def budget_table(
    runs: Mapping[str, Mapping[int, Run]],
    baseline: str,
    budgets: Sequence[int] = (50, 100, 200),
    metric: str = "ndcg@20",
) -> str:
    """Per cell (``runs[cell][seed]``) and budget: mean valid and test ``metric`` and the paired
    gain of test (valid where test is missing) over ``baseline`` with its p-value."""
    head = "| cell | seeds |" + "".join(f" valid @{b} | test @{b} | gain @{b} | p @{b} |" for b in budgets)
    lines = [head, "|" + "---|" * (2 + 4 * len(budgets))]
    base = runs.get(baseline, {})
    for cell, by_seed in runs.items():
        seeds = sorted(by_seed)
        row = f"| {cell} | {','.join(map(str, seeds))} |"
        for budget in budgets:
            valid = {s: at_budget(by_seed[s], budget, "valid", metric) for s in seeds}
            test = {s: at_budget(by_seed[s], budget, "test", metric) for s in seeds}
            split = "test" if all(v is not None for v in test.values()) else "valid"
            gain, p = "", ""
            if cell != baseline:
                theirs = {s: at_budget(r, budget, split, metric) for s, r in base.items()}
                gain, p = _paired(test if split == "test" else valid, theirs)
                gain = f"{gain} (valid)" if gain and split == "valid" else gain
            row += f" {_mean(list(valid.values()))} | {_mean(list(test.values()))} | {gain} | {p} |"
        lines.append(row)
    return "\n".join(lines)


def reach_table(
    runs: Mapping[str, Mapping[int, Run]],
    baseline: str,
    shares: Sequence[float] = (0.9, 0.95),
    metric: str = "ndcg@20",
) -> str:
    """Per cell: the mean rounds and gigabytes (up and down, all clients) to reach each share of the
    baseline's final best validation ``metric`` of the same seed; ``n/m`` when only n of m seeds do."""
    head = "| cell | seeds |" + "".join(f" rounds to {share:.0%} | GB to {share:.0%} |" for share in shares)
    lines = [head, "|" + "---|" * (2 + 2 * len(shares))]
    base = runs.get(baseline, {})
    for cell, by_seed in runs.items():
        seeds = [s for s in sorted(by_seed) if s in base]
        if not seeds:
            continue
        row = f"| {cell} | {','.join(map(str, seeds))} |"
        for share in shares:
            reached = []
            for seed in seeds:
                target = share * float(base[seed]["best_valid_result"][metric])
                rounds = rounds_to_reach(by_seed[seed], target, metric)
                if rounds is not None:
                    reached.append((rounds, bytes_until(by_seed[seed], rounds) / 1e9))
            if not reached:
                row += " never | |"
                continue
            note = "" if len(reached) == len(seeds) else f" ({len(reached)}/{len(seeds)} seeds)"
            mean_rounds = sum(r for r, _ in reached) / len(reached)
            mean_gb = sum(g for _, g in reached) / len(reached)
            row += f" {mean_rounds:.0f}{note} | {mean_gb:.1f} |"
        lines.append(row)
    return "\n".join(lines)


REPRODUCED_FIELDS = ("epochs", "best_valid_result", "test_result", "valid_curve")
"""What a rerun must reproduce exactly before its ``at_budgets`` may join a stored run."""


def merge_at_budgets(stored: Run, rerun: Run) -> dict[str, Any]:
    """``stored`` with the ``at_budgets`` of ``rerun``: how runs stored before round budgets existed
    get their test at each budget, from a rerun of the same command and seed.

    Raises ValueError unless the rerun reproduced the stored run (same seed, rounds, validation
    curve and final metrics): budgets from a different trajectory would not be that run's."""
    if "at_budgets" not in rerun:
        raise ValueError("the rerun has no at_budgets: rerun it with round_budgets set")
    for field in ("model", "dataset", "seed", *REPRODUCED_FIELDS):
        if stored.get(field) != rerun.get(field):
            raise ValueError(
                f"the rerun differs from the stored run in {field!r}: it is not a reproduction of that "
                "run, so its budgets cannot be merged (same command, seed and code are needed)"
            )
    return {**stored, "at_budgets": rerun["at_budgets"]}
