"""Per-user test metrics by history length, from real checkpoints of a tiny dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import write_tiny_dataset

from recbole_lumos.cli import run
from recbole_lumos.errors import CheckpointError
from recbole_lumos.report.user_groups import UserScores, group_table, history_groups, main, per_user_scores


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """Two seeds of a tiny federated SASRec, three rounds each, through the CLI."""
    folder = tmp_path_factory.mktemp("groups")
    data = write_tiny_dataset(folder / "data", n_users=60)
    argv = [
        "--model=FedSASRec",
        "--dataset=tiny",
        f"--data_path={data}",
        "--epochs=3",
        "--hidden_size=16",
        "--inner_size=32",
        "--n_layers=1",
        "--n_heads=1",
        "--MAX_ITEM_LIST_LENGTH=10",
        "--clients_per_round=20",
        "--show_progress=False",
    ]
    previous = os.getcwd()
    os.chdir(folder)
    try:
        results = [run([*argv, f"--seed={seed}"])[0] for seed in (1, 2)]
    finally:
        os.chdir(previous)
    return folder, results


def test_per_user_values_average_to_recboles_own_figure(two_runs) -> None:
    folder, results = two_runs
    for result in results:
        for metric in ("ndcg@20", "hit@10"):
            scores = per_user_scores(folder / result.checkpoint, metric=metric)
            assert len(scores.values) == 60
            assert scores.mean() == pytest.approx(result.test_result[metric], abs=5e-5)
            assert set(scores.history) == set(scores.values) and min(scores.history.values()) >= 1


def test_groups_split_users_by_history_length_without_overlap() -> None:
    history = {u: length for u, length in enumerate([3, 3, 3, 4, 5, 6, 7, 8, 9, 30])}
    groups = history_groups(history, 4)
    members = [u for _, users in groups for u in users]
    assert sorted(members) == sorted(history)  # every user once
    lengths = [[history[u] for u in users] for _, users in groups]
    assert all(max(a) < min(b) for a, b in zip(lengths[:-1], lengths[1:], strict=True))  # ordered, ties kept together
    assert groups[0][0] == "3-3" and groups[-1][0].endswith("-30")


def test_a_model_against_itself_gains_nothing_and_a_better_one_shows_where() -> None:
    history = {1: 2, 2: 2, 3: 50, 4: 50}
    base = [UserScores(s, "ndcg@20", {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}, history) for s in (1, 2)]
    same = group_table(base, base, groups=2)
    assert "+0.0%" in same and "0.0% / 0.0% / 100.0%" in same
    short_better = [UserScores(s, "ndcg@20", {1: 0.2, 2: 0.3, 3: 0.3, 4: 0.4}, history) for s in (1, 2)]
    rows = group_table(base, short_better, groups=2).splitlines()
    assert rows[3].startswith("| 2-2 | 2 |") and "+66.7%" in rows[3]
    assert rows[4].startswith("| 50-50 | 2 |") and "+0.0%" in rows[4]
    with pytest.raises(ValueError, match="pair up by seed"):
        group_table(base, [UserScores(9, "ndcg@20", base[0].values, history)])


def test_the_command_reads_run_jsons(two_runs, capsys: pytest.CaptureFixture[str]) -> None:
    folder, results = two_runs
    runs = [str((folder / r.checkpoint).with_suffix(".json")) for r in results]
    main(["--baseline", *runs, "--model", *runs, "--groups", "2"])
    out = capsys.readouterr().out
    assert out.startswith("| history length | users |") and "| all | 60 |" in out and "+0.0%" in out
    gone = folder / "gone.json"
    gone.write_text('{"checkpoint": "saved/none.pth"}')
    with pytest.raises(CheckpointError, match="is gone"):
        main(["--baseline", str(gone), "--model", str(gone)])
