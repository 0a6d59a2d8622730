"""How much federated LUMOS's tri-view term still pulls on a trained backbone, client by client.

A federated client trains on its own view block alone, so its only negative is its own
counterfactual, and its term is exactly what the packed path adds to its loss
(:meth:`~recbole_lumos.model.lumos.LUMOS.client_block_losses`, divided by ``lambda_cl``).
A term near zero for most clients means LUMOS has stopped differing from FedSASRec;
a term that stays high means the views keep pulling throughout training. For the
untrained and the trained model (eval mode, no dropout) the table gives the mean and
median per-client term, the share of clients under 0.05, and the mean similarity of the
anchor to its F, R and C views.

    python -m recbole_lumos.report.tri_view_activity --checkpoint=saved/LUMOS-<date>.pth \
        [--data_path=..] [--lumos_cache_dir=..]

The run's own config is read from the checkpoint; the views come from its cache and are
never generated here.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from recbole_lumos.errors import ConfigurationError, exit_status

LOW = 0.05
"""A client whose term is under this is counted as no longer pulled by its views."""


@dataclass(frozen=True)
class ActivityRow:
    label: str
    users: int
    mean: float
    median: float
    share_low: float
    sim_f: float
    sim_r: float
    sim_c: float


def tri_view_activity(model: Any, blocks: torch.Tensor, label: str, batch_size: int = 2048) -> ActivityRow:
    """Per-client tri-view term and view similarities of ``model`` over ``[U, 4, L]`` view blocks."""
    from recbole_lumos.model.losses import similarity
    from recbole_lumos.model.lumos import VIEW_ROWS

    if model.lambda_cl <= 0:
        raise ConfigurationError("this model has lambda_cl = 0: it has no tri-view term to measure.")
    model.eval()
    terms, sims = [], []
    with torch.inference_mode():
        for start in range(0, len(blocks), batch_size):
            views = blocks[start : start + batch_size]
            valid = (views[:, 0] > 0).any(1)
            z = model.encode_views(views)
            terms.append((model.client_block_losses(z, views) / model.lambda_cl)[valid])
            sims.append(
                torch.stack([similarity(z[:, 0], z[:, VIEW_ROWS[v]], model.sim).diagonal() for v in "FRC"], 1)[valid]
            )
    term, sim = torch.cat(terms), torch.cat(sims).mean(0)
    if term.numel() == 0:
        raise ConfigurationError("no user has views: nothing to measure.")
    return ActivityRow(
        label,
        term.numel(),
        float(term.mean()),
        float(term.median()),
        float((term < LOW).float().mean()),
        *(float(s) for s in sim),
    )


def activity_table(rows: Sequence[ActivityRow]) -> str:
    """Markdown table of :func:`tri_view_activity` rows."""
    lines = [
        f"| model | users | mean term | median term | share < {LOW} | sim(h, F) | sim(h, R) | sim(h, C) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.users} | {r.mean:.4f} | {r.median:.4f} | {r.share_low:.1%} | "
            f"{r.sim_f:.3f} | {r.sim_r:.3f} | {r.sim_c:.3f} |"
        )
    return "\n".join(lines)


def _run_config(argv: Sequence[str]) -> tuple[Any, dict]:
    """The checkpoint's own config, with ``--data_path`` / ``--lumos_cache_dir`` moved if given."""
    from recbole_lumos.compat import load_trusted
    from recbole_lumos.config import parse_overrides

    overrides = parse_overrides(argv)
    path = overrides.pop("checkpoint", None)
    if not path or not os.path.isfile(str(path)):
        raise ConfigurationError(
            f"--checkpoint must name a LUMOS run's .pth file (the 'checkpoint' of its results JSON), got {path!r}."
        )
    checkpoint = load_trusted(str(path))
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if config is None or "state_dict" not in checkpoint or config["model"] != "LUMOS":
        raise ConfigurationError(f"{path} is not a LUMOS checkpoint written by a run (config + state_dict).")
    unknown = sorted(set(overrides) - {"data_path", "lumos_cache_dir"})
    if unknown:
        raise ConfigurationError(f"only --data_path and --lumos_cache_dir may be changed here, got {unknown}.")
    if "data_path" in overrides:  # RecBole stores <data_path>/<dataset>
        config["data_path"] = os.path.join(str(overrides["data_path"]), config["dataset"])
    if "lumos_cache_dir" in overrides:
        config["lumos_cache_dir"] = str(overrides["lumos_cache_dir"])
    return config, checkpoint["state_dict"]


def run(argv: Sequence[str]) -> str:
    """Rebuild the run's split and views from its checkpoint, measure both models, return the table."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_lumos.data.partition import training_histories
    from recbole_lumos.data.view_blocks import view_blocks
    from recbole_lumos.generation.settings import GeneratorSettings
    from recbole_lumos.generation.views import cached_views_file, ensure_views
    from recbole_lumos.model.lumos import LUMOS

    config, state = _run_config(argv)
    cached_views_file(GeneratorSettings.from_config(config), "give --lumos_cache_dir the folder the run used.")
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    views = ensure_views(config, dataset, train_data._dataset).views  # served from the cache checked above
    blocks = view_blocks(
        training_histories(train_data._dataset),
        views,
        dataset,
        int(config["MAX_ITEM_LIST_LENGTH"]),
        int(config["lumos_num_counterfactuals"] or 1),
    )
    stacked = torch.stack([blocks[user] for user in sorted(blocks)])
    torch.manual_seed(config["seed"])
    untrained = LUMOS(config, train_data._dataset)
    trained = LUMOS(config, train_data._dataset)
    trained.load_state_dict(state)
    table = activity_table(
        [tri_view_activity(untrained, stacked, "untrained"), tri_view_activity(trained, stacked, "trained")]
    )
    print(f"{config['dataset']}, seed {config['seed']}, tau {trained.tau}, sim {trained.sim}, w_c {trained.w_c}")
    print(table)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    logging.basicConfig(level=logging.WARNING)
    return exit_status(run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
