"""Where a model gains: test metrics by how long each user's training history is.

LUMOS's views are meant to help most where a user has little history (extra data, extra
negatives for a sparse client), so a gain or loss against FedSASRec that is flat over the
population says something different from one that sits in the short histories. Each
checkpoint is evaluated with RecBole's own collector and metric classes (``metric_info``
gives one value per user, and their mean is RecBole's figure); users are cut into groups
by training-history length (quantiles over the evaluated users), and each group is compared
seed by seed with a paired t-test.

    python -m recbole_lumos.report.user_groups --data_path=../shared/datasets \\
        --baseline results/lumos-study/ml-1m/runs/FedSASRec/runs/*.json \\
        --model results/lumos-study/ml-1m/runs/nc1-aug0-l0.1/runs/*.json

Each argument is a run JSON (its ``checkpoint`` must still exist) or a ``.pth`` checkpoint;
runs pair up by seed. Held-out items are read here only to score the finished models.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recbole_lumos.errors import CheckpointError
from recbole_lumos.report.stats import mean_std, paired_t_test, relative_gain


@dataclass(frozen=True)
class UserScores:
    """One checkpoint's per-user test metric and each user's training-history length."""

    seed: int
    metric: str
    values: dict[int, float]
    history: dict[int, int]

    def mean(self, users: Sequence[int] | None = None) -> float:
        chosen = self.values if users is None else {u: self.values[u] for u in users}
        return float(np.mean(list(chosen.values())))


def _metric_class(name: str):
    from recbole.evaluator.metrics import MRR, NDCG, Hit

    classes = {"ndcg": NDCG, "hit": Hit, "mrr": MRR}
    if name not in classes:
        raise ValueError(f"metric {name!r} is not one of {sorted(classes)}")
    return classes[name]


def per_user_scores(checkpoint: str | Path, data_path: str | None = None, metric: str = "ndcg@20") -> UserScores:
    """``metric`` (``name@k``) of every test user of a checkpoint, through RecBole's full-sort path."""
    from recbole.utils import get_trainer

    from recbole_lumos.checkpoint import load_data_and_model
    from recbole_lumos.data.partition import training_histories

    name, _, k = metric.partition("@")
    config, model, _, train_data, _, test_data = load_data_and_model(checkpoint, data_path)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.tot_item_num = test_data._dataset.item_num
    model.eval()
    users: list[torch.Tensor] = []
    with torch.no_grad():
        for batch in test_data:
            interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
            users.append(interaction[config["USER_ID_FIELD"]].cpu())
            trainer.eval_collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
    trainer.eval_collector.model_collect(model)
    struct = trainer.eval_collector.get_data_struct()
    measure = _metric_class(name)(config)
    pos_index, pos_len = measure.used_info(struct)
    per_user = (measure.metric_info(pos_index, pos_len) if name == "ndcg" else measure.metric_info(pos_index))[
        :, int(k) - 1
    ]
    ids = torch.cat(users).tolist()
    histories = training_histories(train_data._dataset)
    return UserScores(
        seed=int(config["seed"]),
        metric=metric,
        values=dict(zip(ids, map(float, per_user), strict=True)),
        history={u: len(histories[u]) if u in histories else 0 for u in ids},
    )


def history_groups(history: Mapping[int, int], groups: int) -> list[tuple[str, list[int]]]:
    """Users cut into ``groups`` groups of about equal size by history length (ties stay together)."""
    users = sorted(history, key=lambda u: (history[u], u))
    lengths = np.array([history[u] for u in users])
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, groups + 1)[1:-1], method="higher"))
    out, start = [], 0
    for edge in [*edges.tolist(), int(lengths.max()) + 1]:
        stop = int(np.searchsorted(lengths, edge, side="left"))
        if stop > start:
            members = users[start:stop]
            out.append((f"{history[members[0]]}-{history[members[-1]]}", members))
            start = stop
    return out


def group_table(baseline: Sequence[UserScores], model: Sequence[UserScores], groups: int = 4) -> str:
    """Per history group: users, the baseline's and the model's mean metric over the seeds they share,
    the relative gain, the paired t-test over seeds, and the share of (user, seed) pairs where the
    model ranks the held-out item better, worse or the same."""
    base = {s.seed: s for s in baseline}
    pairs = [(base[m.seed], m) for m in model if m.seed in base]
    if not pairs:
        raise ValueError("no seed is shared by the baseline and the model runs: they pair up by seed")
    metric = pairs[0][0].metric
    history = pairs[0][0].history
    rows = [("all", sorted(history))] + history_groups(history, groups)
    lines = [
        f"| history length | users | baseline {metric} | model {metric} | gain | p | model better / worse / same |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, users in rows:
        theirs = [b.mean(users) for b, _ in pairs]
        ours = [m.mean(users) for _, m in pairs]
        gain = f"{100 * relative_gain(sum(ours), sum(theirs)):+.1f}%" if sum(theirs) else ""
        p = f"{paired_t_test(ours, theirs)[1]:.3f}" if len(pairs) >= 2 else ""
        diffs = np.array([m.values[u] - b.values[u] for b, m in pairs for u in users])
        better, worse = float((diffs > 0).mean()), float((diffs < 0).mean())
        shown_b, shown_m = mean_std(theirs), mean_std(ours)
        lines.append(
            f"| {label} | {len(users)} | {shown_b[0]:.4f} ± {shown_b[1]:.4f} | {shown_m[0]:.4f} ± {shown_m[1]:.4f} "
            f"| {gain} | {p} | {better:.1%} / {worse:.1%} / {1 - better - worse:.1%} |"
        )
    return "\n".join(lines)


def _checkpoint_of(path: str) -> str:
    """A run JSON's checkpoint (as written, or next to the JSON: runs record it relative to their
    working folder), or the path itself."""
    if not path.endswith(".json"):
        return path
    named = json.loads(Path(path).read_text()).get("checkpoint")
    if not named:
        raise CheckpointError(f"{path} names no checkpoint: pass the run's .pth file instead")
    for candidate in (Path(named), Path(path).parent / Path(named).name):
        if candidate.exists():
            return str(candidate)
    raise CheckpointError(f"{path} names the checkpoint {named}, which is gone: pass the .pth file instead")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", nargs="+", required=True, help="run JSONs or .pth checkpoints")
    parser.add_argument("--model", nargs="+", required=True, help="run JSONs or .pth checkpoints")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--metric", default="ndcg@20")
    parser.add_argument("--groups", type=int, default=4)
    args = parser.parse_args(argv)
    scores = {
        side: [per_user_scores(_checkpoint_of(p), args.data_path, args.metric) for p in paths]
        for side, paths in (("baseline", args.baseline), ("model", args.model))
    }
    print(group_table(scores["baseline"], scores["model"], args.groups))


if __name__ == "__main__":
    main()
