"""Mean ± std over seeds from the result JSONs that runs write next to their checkpoints.

    python -m recbole_lumos.report.summarize saved/*.json --out results/NAME.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

DEFAULT_METRICS = ("hit@10", "hit@20", "ndcg@10", "ndcg@20")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def label(result: dict) -> str:
    """Row name: the model, with its train mode when it is not RecBole's prefix mode."""
    mode = result.get("train_mode", "prefix")
    return result["model"] if mode == "prefix" or result.get("federated") else f"{result['model']} ({mode})"


def summarize(results: Iterable[dict], metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """A Markdown table: one row per model, test metrics as mean ± std over seeds."""
    by_model: dict[str, list[dict]] = {}
    for result in results:
        by_model.setdefault(label(result), []).append(result)
    header = ["model", "seeds", *[f"test {m}" for m in metrics], "epochs / rounds", "wall time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, runs in by_model.items():
        cells = [model, ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))]
        for metric in metrics:
            mean, std = mean_std([r["test_result"][metric] for r in runs])
            cells.append(f"{mean:.4f} ± {std:.4f}")
        epochs = [r.get("epochs") for r in runs if r.get("epochs") is not None]
        cells.append(f"{statistics.fmean(epochs):.1f}" if epochs else "")
        cells.append(f"{statistics.fmean(r['wall_time_s'] for r in runs):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="also write the table (and the runs' JSON) here")
    args = parser.parse_args(argv)
    results = [json.loads(path.read_text()) for path in args.files]
    table = summarize(results)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
