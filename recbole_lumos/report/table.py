"""The comparison table printed at the end of a multi-model run."""

from __future__ import annotations

from collections.abc import Sequence

from recbole_lumos.quick_start import RunResult


def comparison_table(results: Sequence[RunResult], failures: dict[str, str] | None = None, split: str = "test") -> str:
    """A Markdown table: one row per model, one column per metric of ``split``."""
    metrics: list[str] = []
    for result in results:
        scores = result.test_result if split == "test" else result.best_valid_result
        metrics += [m for m in scores if m not in metrics]
    header = ["model", *metrics, "wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        scores = result.test_result if split == "test" else result.best_valid_result
        cells = [f"{scores[m]:.4f}" if m in scores else "" for m in metrics]
        lines.append("| " + " | ".join([result.model, *cells, f"{result.wall_time_s:.1f}"]) + " |")
    for model, error in (failures or {}).items():
        cells = ["failed"] + [""] * (len(metrics) - 1) if metrics else []
        lines.append("| " + " | ".join([model, *cells, error.replace("|", "/")]) + " |")
    return "\n".join(lines)
