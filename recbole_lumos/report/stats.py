"""The statistics of a comparison's tables and plots: means over seeds, costs, significance.

:mod:`~recbole_lumos.report.comparison` (its tables) and :mod:`~recbole_lumos.report.plots`
(its figures) both need them; kept here, neither module imports the other for them.
``comparison`` still exposes the ones it uses, for code that imports them from there.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def time_cell(runs: Sequence[dict], key: str) -> str:
    """Mean of a time field (``wall_time_s``, ``cpu_time_s``) over runs, whole seconds.

    Blank when a run did not record it; prefixed with ``>=`` when a run resumed from a
    checkpoint older than the run clock, so its time covers the last segment only.
    """
    values = [r.get(key) for r in runs]
    if not values or any(v is None for v in values):
        return ""
    partial = any(r.get("time_complete", True) is False for r in runs)
    return f"{'>=' if partial else ''}{statistics.fmean(values):.0f}"


def relative_gain(candidate: float, baseline: float) -> float:
    """``(candidate - baseline) / baseline``."""
    return (candidate - baseline) / baseline if baseline else math.nan


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Paired two-sided t-test of ``a`` against ``b`` (same seeds): ``(t, p)``; NaN below 2 pairs."""
    if len(a) != len(b) or len(a) < 2:
        return math.nan, math.nan
    from scipy import stats

    result = stats.ttest_rel(a, b)
    return float(result.statistic), float(result.pvalue)


def total_bytes_per_client(run: dict) -> float:
    """Bytes sent up and down over the whole run, divided by the number of clients (federated)."""
    traffic = run.get("traffic") or []
    clients = run.get("num_clients") or 0
    total = sum(t["bytes_up_round"] + t["bytes_down_round"] for t in traffic)
    return total / clients if clients else math.nan
