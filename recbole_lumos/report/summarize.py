"""Mean ± std over seeds from the result JSONs that runs write next to their checkpoints.

    python -m recbole_lumos.report.summarize saved/*.json --out results/NAME.md

A file may also hold a list of runs (the JSON that ``--out`` writes beside the table).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

from recbole_lumos.report.comparison import mean_std, time_cell

DEFAULT_METRICS = ("hit@10", "hit@20", "ndcg@10", "ndcg@20")
VARIANT_KEYS = (
    "sim",
    "tau",
    "lambda_cl",
    "window_stride",
    "user_batch_size",
    "user_batch_order",
    "lumos_views",
    "lumos_generation",
    "lumos_views_seed",
    "MAX_ITEM_LIST_LENGTH",
)
"""Config keys that split a model's runs into separate rows when they differ between runs."""


def label(result: dict) -> str:
    """Row name: the model, with its train mode when it is not RecBole's prefix mode."""
    mode = result.get("train_mode", "prefix")
    return result["model"] if mode == "prefix" or result.get("federated") else f"{result['model']} ({mode})"


def variant_labels(results: Sequence[dict], keys: Sequence[str] = VARIANT_KEYS) -> list[str]:
    """Each result's row name: :func:`label`, plus ``key=value`` for the ``keys`` whose value
    differs between runs of that model (so ``CL4SRec (sim=cos, tau=0.5)`` and
    ``CL4SRec (sim=dot, tau=1.0)`` stay apart, while a lone configuration keeps its plain name)."""
    bases = [label(r) for r in results]
    differing: dict[str, list[str]] = {}
    for base in set(bases):
        runs = [r for r, b in zip(results, bases, strict=True) if b == base]
        differing[base] = [k for k in keys if len({repr(r.get("config", {}).get(k)) for r in runs}) > 1]
    names = []
    for result, base in zip(results, bases, strict=True):
        parts = [f"{k}={result.get('config', {}).get(k)}" for k in differing[base]]
        if not parts:
            names.append(base)
        elif base.endswith(")"):
            names.append(f"{base[:-1]}, {', '.join(parts)})")
        else:
            names.append(f"{base} ({', '.join(parts)})")
    return names


def summarize(results: Iterable[dict], metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """A Markdown table: one row per model (and variant), test metrics as mean ± std over seeds."""
    results = list(results)
    by_model: dict[str, list[dict]] = {}
    for result, name in zip(results, variant_labels(results), strict=True):
        by_model.setdefault(name, []).append(result)
    header = ["model", "seeds", *[f"test {m}" for m in metrics], "epochs / rounds", "wall time (s)", "CPU time (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, runs in by_model.items():
        cells = [model, ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))]
        for metric in metrics:
            mean, std = mean_std([r["test_result"][metric] for r in runs])
            cells.append(f"{mean:.4f} ± {std:.4f}")
        epochs = [r.get("epochs") for r in runs if r.get("epochs") is not None]
        cells.append(f"{statistics.fmean(epochs):.1f}" if epochs else "")
        cells += [time_cell(runs, "wall_time_s"), time_cell(runs, "cpu_time_s")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="also write the table (and the runs' JSON) here")
    args = parser.parse_args(argv)
    results = []
    for path in args.files:  # a run's JSON, or a list of them (an earlier --out)
        loaded = json.loads(path.read_text())
        results.extend(loaded if isinstance(loaded, list) else [loaded])
    table = summarize(results)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
