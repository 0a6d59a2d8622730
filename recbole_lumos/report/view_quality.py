"""How much each view knows about a user's future: a diagnostic, read after the fact.

    python -m recbole_lumos.report.view_quality --dataset=ml-100k [--data_path=..]
        [--lumos_generation=semantic] [--lumos_max_users=N] [--config_files=..] [any --key=value]

It loads the views a LUMOS run with the same settings would load (from the cache; it
never generates), then asks, per view, how often the user's held-out validation item
and test item fall inside it, against what a random list of the same length would hit.
An F view that holds the next item far above chance carries signal the backbone can
use; one near chance only adds noise. Comparing datasets (or prompt against semantic
views) this way helps explain where the tri-view loss pays off.

``--probe`` asks the same of the item encoders alone, before any view is written (the
generator-alone probe): each user's catalogue is scored by cosine to the mean embedding
of the last ``lumos_intent_window`` training items, history excluded, and HR@20 and
NDCG@20 of the validation item are printed for every encoder of ``--probe_encoders``,
next to popularity and to the last item's transition counts over all users' training
data (central; a floor any trained model should pass):

    python -m recbole_lumos.report.view_quality --probe --dataset=amazon-beauty \
        --probe_encoders=lm,all-MiniLM-L6-v2 [--data_path=..]

The held-out items are read here for *evaluation only*: the views were fixed before
this runs, from training histories alone, and nothing computed here flows back into
a view, a cache or a model.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import recbole_lumos.compat  # noqa: F401  (RecBole workarounds before RecBole is used)
from recbole_lumos.errors import exit_status
from recbole_lumos.generation.settings import view_names


@dataclass(frozen=True)
class ViewQuality:
    """One view's statistics over the users that have it and a held-out item.

    Only a view's *new* items (not in the user's training history) can hold a held-out
    item that the history does not already show, so hits and chance are counted on them:
    F's ``k_f`` continuations, R's substitutes, C's counterfactual replacements.
    """

    view: str
    users: int
    mean_length: float
    mean_new: float
    """New items per view (not in the training history)."""
    valid_hit: float
    """Share of users whose validation item is among the view's new items."""
    test_hit: float
    """Share of users whose test item is among the view's new items."""
    chance: float
    """Expected share for as many items drawn uniformly from the items the user has not seen."""

    @property
    def lift(self) -> float:
        """Validation hits over chance (1.0: no better than random; below 1: the view avoids it)."""
        return self.valid_hit / self.chance if self.chance else float("nan")


def view_quality(
    views: Mapping[str, Mapping[str, Sequence[str]]],
    valid_items: Mapping[str, str],
    test_items: Mapping[str, str],
    histories: Mapping[str, Sequence[str]],
    num_items: int,
    num_counterfactuals: int = 1,
) -> list[ViewQuality]:
    """Per-view hit rates of held-out items among new items; users without a validation item are left out.

    All arguments use the dataset's original tokens. ``num_items`` counts the catalogue
    items a view can draw from (RecBole's padding id excluded). Every counterfactual
    (C, C2, ... up to ``num_counterfactuals``) gets its own row.
    """
    users = [u for u in views if u in valid_items]
    rows = []
    for name in view_names(num_counterfactuals):
        having = [u for u in users if views[u].get(name)]
        if not having:
            continue
        seen = {u: set(histories.get(u, ())) for u in having}
        new = {u: set(views[u][name]) - seen[u] for u in having}
        rows.append(
            ViewQuality(
                view=name,
                users=len(having),
                mean_length=sum(len(views[u][name]) for u in having) / len(having),
                mean_new=sum(len(new[u]) for u in having) / len(having),
                valid_hit=sum(valid_items[u] in new[u] for u in having) / len(having),
                test_hit=sum(test_items.get(u) in new[u] for u in having) / len(having),
                chance=sum(len(new[u]) / max(1, num_items - len(seen[u])) for u in having) / len(having),
            )
        )
    return rows


def quality_table(rows: Sequence[ViewQuality]) -> str:
    """A Markdown table of :func:`view_quality`'s rows."""
    lines = [
        "| view | users | mean length | new items | valid item among new | test item among new | chance | "
        "lift (valid) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.view} | {r.users} | {r.mean_length:.1f} | {r.mean_new:.1f} | {r.valid_hit:.4f} | "
            f"{r.test_hit:.4f} | {r.chance:.4f} | {r.lift:.2f}x |"
        )
    return "\n".join(lines)


def _held_out(dataloader: Any, dataset: Any) -> dict[str, str]:
    """User token -> the target item token of a full-sort evaluation split (one row per user)."""
    inter = dataloader._dataset.inter_feat
    users = dataset.id2token(dataset.uid_field, inter[dataset.uid_field].numpy())
    items = dataset.id2token(dataset.iid_field, inter[dataset.iid_field].numpy())
    return {str(u): str(i) for u, i in zip(users, items, strict=True)}


def run(argv: Sequence[str]) -> str:
    """Build the split as a LUMOS run does, load the cached views, return the table."""
    from recbole_lumos.data.partition import training_histories
    from recbole_lumos.generate import prepare_split
    from recbole_lumos.generation.settings import GeneratorSettings
    from recbole_lumos.generation.views import cached_views_file

    config, dataset, (train_data, valid_data, test_data) = prepare_split(argv)
    settings = GeneratorSettings.from_config(config)
    mode, views_file = cached_views_file(
        settings, "run `python -m recbole_lumos.generate` with the same arguments first."
    )
    item_tokens = [str(t) for t in dataset.field2id_token[dataset.iid_field]]
    histories_by_id = training_histories(train_data._dataset)
    user_tokens = dataset.id2token(dataset.uid_field, np.asarray(list(histories_by_id), dtype=np.int64))
    histories = {
        str(token): [item_tokens[i] for i in history.tolist()]
        for token, history in zip(user_tokens, histories_by_id.values(), strict=True)
    }
    views = views_file.load(users=set(histories), items=set(item_tokens[1:]))
    if settings.lumos_max_users is not None:  # the users a run with this limit uses: the first N by token
        views = {user: views[user] for user in sorted(views)[: int(settings.lumos_max_users)]}
    valid_items, test_items = _held_out(valid_data, dataset), _held_out(test_data, dataset)
    rows = view_quality(
        views, valid_items, test_items, histories, len(item_tokens) - 1, int(settings.lumos_num_counterfactuals)
    )
    table = quality_table(rows)
    print(f"{mode} views of {len(views)} users in {views_file.path}")
    print(table)
    return table


def _rank_metrics(scores: np.ndarray, targets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row hit@k and NDCG@k of ``targets`` under ``scores`` (``-inf`` = excluded), ties counted against."""
    target_scores = scores[np.arange(len(targets)), targets]
    rank = (scores > target_scores[:, None]).sum(1)  # 0-based
    hit = rank < k
    return hit.astype(np.float64), np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)


def probe_scorers(
    histories: Mapping[int, np.ndarray],
    targets: Mapping[int, int],
    num_items: int,
    embeddings: Mapping[str, np.ndarray],
    window: int = 5,
    k: int = 20,
    chunk: int = 1024,
) -> dict[str, tuple[float, float]]:
    """HR@k and NDCG@k of the held-out item (``targets``: user id -> item id) for each scorer.

    ``histories`` are training histories (internal item ids, time order). ``embeddings``
    maps a name to a ``[num_items - 1, d]`` matrix (row ``i`` is item ``i + 1``). Every
    scorer ranks the whole catalogue with the user's history removed, as RecBole's full
    ranking does.
    """
    users = [u for u in targets if u in histories and len(histories[u])]
    popularity = np.zeros(num_items, dtype=np.float64)
    transitions: dict[int, np.ndarray] = {}
    following: dict[int, list[int]] = {}
    for history in histories.values():
        np.add.at(popularity, history, 1.0)
        for a, b in zip(history[:-1], history[1:], strict=True):
            following.setdefault(int(a), []).append(int(b))
    for item, nexts in following.items():
        transitions[item] = np.bincount(nexts, minlength=num_items).astype(np.float64)
    unit = {}
    for name, matrix in embeddings.items():
        full = np.zeros((num_items, matrix.shape[1]), dtype=np.float32)
        full[1:] = matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(min=1e-12)
        unit[name] = full
    totals = {name: [0.0, 0.0] for name in ["popularity", *embeddings, "transitions"]}
    for start in range(0, len(users), chunk):
        batch = users[start : start + chunk]
        mask = np.zeros((len(batch), num_items), dtype=bool)
        mask[:, 0] = True
        for row, user in enumerate(batch):
            mask[row, histories[user]] = True
        goal = np.asarray([targets[u] for u in batch])
        scored = {"popularity": np.broadcast_to(popularity, mask.shape).copy()}
        for name, table in unit.items():
            intent = np.stack([table[histories[u][-window:]].mean(0) for u in batch])
            scored[name] = intent @ table.T
        # the last item's successors first, popularity breaking ties (and ranking the rest)
        tie = popularity / (popularity.max() + 1.0)
        zero = np.zeros(num_items)
        scored["transitions"] = np.stack([transitions.get(int(histories[u][-1]), zero) for u in batch]) + tie
        for name, scores in scored.items():
            scores = scores.astype(np.float64)
            scores[mask] = -np.inf
            hit, ndcg = _rank_metrics(scores, goal, k)
            totals[name][0] += hit.sum()
            totals[name][1] += ndcg.sum()
    return {name: (hr / max(1, len(users)), nd / max(1, len(users))) for name, (hr, nd) in totals.items()}


def probe_table(results: Mapping[str, tuple[float, float]], k: int = 20) -> str:
    lines = [f"| scorer | HR@{k} | NDCG@{k} |", "|---|---|---|"]
    lines += [f"| {name} | {hr:.4f} | {nd:.4f} |" for name, (hr, nd) in results.items()]
    return "\n".join(lines)


def run_probe(argv: Sequence[str]) -> str:
    """The generator-alone probe on the validation items (see the module docstring)."""
    from recbole_lumos.data.partition import training_histories
    from recbole_lumos.generate import prepare_split
    from recbole_lumos.generation.catalogue import catalogue_embeddings

    encoders = ["lm", "all-MiniLM-L6-v2"]
    rest = []
    for arg in argv:
        if arg.startswith("--probe_encoders="):
            encoders = [e for e in arg.split("=", 1)[1].split(",") if e]
        elif arg != "--probe":
            rest.append(arg)
    config, dataset, (train_data, valid_data, _) = prepare_split(rest)
    histories = {u: h.numpy() for u, h in training_histories(train_data._dataset).items()}
    inter = valid_data._dataset.inter_feat
    targets = dict(
        zip(inter[dataset.uid_field].tolist(), inter[dataset.iid_field].tolist(), strict=True)
    )
    embeddings = {}
    for encoder in encoders:
        config["lumos_item_encoder"] = encoder
        embeddings[f"encoder {encoder}"] = catalogue_embeddings(config, train_data._dataset)
    num_items = int(train_data._dataset.item_num)
    window = int(config["lumos_intent_window"] or 5)
    table = probe_table(probe_scorers(histories, targets, num_items, embeddings, window))
    print(f"{config['dataset']}: validation items of {len(targets)} users, intent = mean of the last {window} items")
    print(table)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    logging.basicConfig(level=logging.WARNING)
    args = list(sys.argv[1:] if argv is None else argv)
    return exit_status(run_probe if "--probe" in args else run, args)


if __name__ == "__main__":
    sys.exit(main())
