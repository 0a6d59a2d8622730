"""Results at round budgets, on hand-built runs."""

import pytest

from recbole_lumos.report.budgets import (
    at_budget,
    budget_table,
    bytes_until,
    merge_at_budgets,
    reach_table,
    rounds_to_reach,
)


def _run(curve: list[float], tests: dict[int, float] | None = None, best: float | None = None) -> dict:
    """Validations every 5 rounds (epochs 4, 9, ...), 10 bytes up and 20 down a round."""
    return {
        "valid_curve": [{"epoch": 5 * i + 4, "ndcg@20": v} for i, v in enumerate(curve)],
        "at_budgets": [{"rounds": b, "test": {"ndcg@20": t}} for b, t in (tests or {}).items()],
        "best_valid_result": {"ndcg@20": best if best is not None else max(curve)},
        "traffic": [{"round": r, "bytes_up_round": 10, "bytes_down_round": 20} for r in range(5 * len(curve))],
    }


def test_valid_at_a_budget_is_the_best_validation_up_to_that_round():
    run = _run([0.1, 0.3, 0.2, 0.4])  # rounds 5, 10, 15, 20
    assert at_budget(run, 4) is None
    assert at_budget(run, 5) == 0.1
    assert at_budget(run, 14) == 0.3
    assert at_budget(run, 15) == 0.3  # round 15's 0.2 does not beat round 10's
    assert at_budget(run, 100) == 0.4


def test_test_at_a_budget_comes_from_the_run_or_is_missing():
    run = _run([0.1, 0.3], tests={10: 0.25})
    assert at_budget(run, 10, "test") == 0.25
    assert at_budget(run, 5, "test") is None


def test_rounds_and_bytes_to_reach_a_target():
    run = _run([0.1, 0.3, 0.2, 0.4])
    assert rounds_to_reach(run, 0.25) == 10
    assert rounds_to_reach(run, 0.5) is None
    assert bytes_until(run, 10) == 10 * 30


def test_budget_table_pairs_test_gains_by_seed():
    base = {1: _run([0.1, 0.2], tests={5: 0.10, 10: 0.20}), 2: _run([0.1, 0.2], tests={5: 0.20, 10: 0.20})}
    ours = {1: _run([0.1, 0.2], tests={5: 0.11, 10: 0.22}), 2: _run([0.1, 0.2], tests={5: 0.22, 10: 0.23})}
    table = budget_table({"base": base, "ours": ours}, "base", budgets=(5, 10))
    row = next(line for line in table.splitlines() if line.startswith("| ours "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == f"{100 * (0.33 / 0.30 - 1):+.1f}%"  # @5: 0.11 + 0.22 against 0.10 + 0.20
    assert cells[8] == "+12.5%" and 0 < float(cells[9]) < 0.2  # @10: 0.45 against 0.40, both seeds up


def test_budget_table_falls_back_to_validation_and_says_so():
    base = {1: _run([0.1, 0.2]), 2: _run([0.15, 0.2])}
    ours = {1: _run([0.2, 0.2]), 2: _run([0.3, 0.2])}
    row = budget_table({"base": base, "ours": ours}, "base", budgets=(5,)).splitlines()[-1]
    assert "(valid)" in row and f"{100 * (0.5 / 0.25 - 1):+.1f}%" in row


def test_reach_table_counts_the_seeds_that_never_get_there():
    base = {1: _run([0.1, 0.2], best=0.2), 2: _run([0.1, 0.4], best=0.4)}
    ours = {1: _run([0.19, 0.3]), 2: _run([0.1, 0.2])}
    row = reach_table({"base": base, "ours": ours}, "base", shares=(0.9,)).splitlines()[-1]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # seed 1 reaches 0.18 at round 5 (150 bytes); seed 2 never reaches 0.36
    assert cells[2] == "5 (1/2 seeds)"
    assert float(cells[3]) == pytest.approx(150 / 1e9, abs=0.05)


def test_budgets_merge_only_from_a_rerun_that_reproduced_the_run():
    stored = {"model": "LUMOS", "dataset": "ml-100k", "seed": 1, "epochs": 20, **_run([0.1, 0.3])}
    del stored["at_budgets"]
    rerun = {**stored, "at_budgets": [{"rounds": 10, "test": {"ndcg@20": 0.2}}], "wall_time_s": 9.0}
    merged = merge_at_budgets(stored, rerun)
    assert at_budget(merged, 10, "test") == 0.2
    assert "wall_time_s" not in merged  # nothing else comes over
    drifted = {**rerun, "valid_curve": [*rerun["valid_curve"][:-1], {"epoch": 9, "ndcg@20": 0.31}]}
    with pytest.raises(ValueError, match="valid_curve"):
        merge_at_budgets(stored, drifted)
    with pytest.raises(ValueError, match="round_budgets"):
        merge_at_budgets(stored, stored)
