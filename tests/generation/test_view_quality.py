"""The view-quality diagnostic: hit rates by hand, and the command on cached views."""

from __future__ import annotations

import pytest

from recbole_lumos.errors import EXIT_CODE
from recbole_lumos.generate import main as generate
from recbole_lumos.report.view_quality import main, view_quality


def test_hits_are_counted_among_new_items_against_chance_by_hand():
    views = {
        "a": {"F": ["1", "2"], "R": ["3", "4"], "C": ["9", "8"]},
        "b": {"F": ["6", "7"], "R": ["1", "2"], "C": ["7", "9"]},
        "c": {"F": ["1", "1"], "R": ["2", "3"], "C": ["4", "5"]},  # no held-out item: left out
    }
    valid = {"a": "2", "b": "6"}
    test = {"a": "4", "b": "7"}
    histories = {"a": ["1", "3"], "b": ["6"]}
    rows = {r.view: r for r in view_quality(views, valid, test, histories, num_items=10)}
    f, r, c = rows["F"], rows["R"], rows["C"]
    assert (f.users, f.mean_length, f.mean_new) == (2, 2.0, 1.0)  # a: new {2}; b: new {7} (6 is history)
    assert f.valid_hit == pytest.approx(0.5)  # a: 2 is new; b: 6 is in the view but already in b's history
    assert f.test_hit == pytest.approx(0.5)  # b: 7
    assert f.chance == pytest.approx((1 / 8 + 1 / 9) / 2)  # a: 1 new of 8 unseen; b: 1 new of 9 unseen
    assert f.lift == pytest.approx(0.5 / f.chance)
    assert (r.mean_new, r.valid_hit, r.test_hit) == (1.5, 0.0, pytest.approx(0.5))  # a: new {4}; b: new {1, 2}
    assert (c.valid_hit, c.test_hit) == (0.0, pytest.approx(0.5))  # b: 7 among C's new items


def test_every_counterfactual_gets_its_own_row():
    views = {"a": {"F": ["1"], "R": ["3"], "C": ["9"], "C2": ["2"], "C3": ["4"]}}
    rows = view_quality(views, {"a": "2"}, {"a": "4"}, {"a": ["1", "3"]}, num_items=10, num_counterfactuals=3)
    assert [r.view for r in rows] == ["F", "R", "C", "C2", "C3"]
    assert [(r.valid_hit, r.test_hit) for r in rows[2:]] == [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    assert [r.view for r in view_quality(views, {"a": "2"}, {"a": "4"}, {"a": ["1"]}, num_items=10)] == ["F", "R", "C"]


def test_the_command_reads_cached_views_and_never_generates(tiny_data, tiny_lm, tmp_path, capsys):
    argv = [
        "--dataset=tiny",
        f"--data_path={tiny_data}",
        "--lumos_generation=semantic",
        f"--lumos_llm={tiny_lm}",
        f"--lumos_cache_dir={tmp_path / 'views'}",
        "--MAX_ITEM_LIST_LENGTH=10",
        "--show_progress=False",
    ]
    assert main(argv) == EXIT_CODE  # nothing cached yet: a clear error, and nothing is generated
    assert "python -m recbole_lumos.generate" in capsys.readouterr().err
    assert not (tmp_path / "views").exists() or not list((tmp_path / "views").glob("*.views"))

    assert generate([*argv, "--lumos_max_users=6"]) == 0
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("semantic views of 6 users in ")
    rows = [line.split(" | ") for line in out if line.startswith(("| F ", "| R ", "| C "))]
    assert [row[0] for row in rows] == ["| F", "| R", "| C"]
    for row in rows:
        assert row[1] == "6"
        assert float(row[3]) <= float(row[2]) and 0.0 <= float(row[4]) <= 1.0 and 0.0 <= float(row[6]) <= 1.0


def test_the_probe_ranks_the_catalogue_like_a_full_sort_evaluation():
    """Hand-checked: 5 items; the encoder puts item 4 next to item 3, popularity prefers item 2,
    and the last item's successors (over all users' training histories) point at item 5."""
    import numpy as np

    from recbole_lumos.report.view_quality import probe_scorers

    histories = {1: np.array([1, 3]), 2: np.array([2, 3, 5]), 3: np.array([2, 2, 3, 5])}
    targets = {1: 4, 2: 1, 3: 4}
    angle = {1: 0.0, 2: 2.0, 3: 4.0, 4: 4.2, 5: 1.0}  # unit circle: 4 is nearest 3
    table = np.array([[np.cos(angle[i]), np.sin(angle[i])] for i in range(1, 6)], dtype=np.float32)
    result = probe_scorers(histories, targets, num_items=6, embeddings={"text": table}, window=1, k=1)
    # user 1: intent = item 3, history {1, 3} removed -> item 4 first (hit); user 2: intent = item 5 ->
    # item 1 (angle 0) is nearest among {1, 4} (hit); user 3: intent = item 5 -> 1 before 4 (miss)
    assert result["text"] == (2 / 3, 2 / 3)
    # popularity (2: 3, 3: 3, 5: 2, 1: 1, 4: 0): user 1 gets 2 (miss), user 2 gets 1 (hit), user 3 gets 1 (miss)
    assert result["popularity"] == (1 / 3, 1 / 3)
    # successors of 3 are {5, 5}, ties by popularity: user 1 -> 5 (miss); user 2, 3 (last item 5): no successor,
    # popularity decides: user 2 -> 1 (hit), user 3 -> 1 (miss)
    assert result["transitions"] == (1 / 3, 1 / 3)
    at_two = probe_scorers(histories, targets, num_items=6, embeddings={"text": table}, window=1, k=2)
    assert at_two["text"][0] == 1.0 and at_two["text"][1] == pytest.approx((1 + 1 + 1 / np.log2(3)) / 3)
