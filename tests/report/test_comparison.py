"""The comparison: resumable runs, and the table's arithmetic against a hand computation."""

import json
import math

import pytest
from conftest import TINY_CLI

from recbole_lumos.cli import run
from recbole_lumos.report.comparison import (
    ComparisonStore,
    gains_table,
    markdown_table,
    matrix_gains_table,
    paired_t_test,
    time_cell,
)

TINY = TINY_CLI


def test_an_interrupted_comparison_resumes_without_redoing_finished_runs(tiny_data, tmp_path, capsys):
    folder = tmp_path / "cmp"
    argv = ["--model=SASRec,FedSASRec", "--seeds=2", f"--data_path={tiny_data}", f"--results_dir={folder}", *TINY]
    first = run(argv)
    assert [(r.model, r.seed) for r in first] == [("SASRec", 2020), ("FedSASRec", 2020), ("SASRec", 2021),
                                                  ("FedSASRec", 2021)]
    assert all(r.train_mode == "all_positions" for r in first)  # one train mode for every model
    (folder / "runs" / "FedSASRec-seed2021.json").unlink()  # as if the run had been killed there
    stored = (folder / "runs" / "SASRec-seed2020.json").read_text()
    second = run(argv)
    assert [(r.model, r.seed) for r in second] == [("FedSASRec", 2021)]
    assert (folder / "runs" / "SASRec-seed2020.json").read_text() == stored
    assert json.loads((folder / "runs" / "FedSASRec-seed2021.json").read_text())["test_result"] == first[3].test_result
    table = (folder / "results.md").read_text()
    assert "| SASRec | 2020,2021 |" in table and "| FedSASRec | 2020,2021 |" in table
    assert "test_ndcg@20_mean" in (folder / "results.csv").read_text().splitlines()[0]
    assert {p.name for p in folder.glob("*.png")} >= {"valid_curve.png", "accuracy_vs_bytes.png"}
    assert f"results: {folder}" in capsys.readouterr().out
    assert len(run([*argv, "--rerun"])) == 4


def _run(model, seed, ndcg20, hit20=0.2):
    metrics = {"hit@10": 0.1, "hit@20": hit20, "ndcg@10": 0.05, "ndcg@20": ndcg20}
    return {"model": model, "seed": seed, "test_result": metrics, "best_valid_result": metrics, "wall_time_s": 10.0,
            "epochs": 3, "train_mode": "all_positions", "federated": False}


def test_table_arithmetic_matches_a_hand_computation(tmp_path):
    store = ComparisonStore(tmp_path)
    lumos, base = [0.12, 0.15, 0.13], [0.10, 0.11, 0.12]
    for seed, (a, b) in enumerate(zip(lumos, base, strict=True), start=1):
        store.save_run("LUMOS", seed, _run("LUMOS", seed, a))
        store.save_run("SASRec", seed, _run("SASRec", seed, b))
    rows = store.summaries(["SASRec", "LUMOS"], [1, 2, 3])
    # mean 0.1333..., sample std sqrt(((-.0133)^2 + .0167^2 + (-.0033)^2) / 2) = 0.015275
    assert "| LUMOS | 1,2,3 | 0.1000 ± 0.0000 | 0.2000 ± 0.0000 | 0.0500 ± 0.0000 | 0.1333 ± 0.0153 |" in (
        markdown_table(rows)
    )
    differences = [a - b for a, b in zip(lumos, base, strict=True)]  # .02, .04, .01
    mean_d = sum(differences) / 3
    sd_d = math.sqrt(sum((d - mean_d) ** 2 for d in differences) / 2)
    t_by_hand = mean_d / (sd_d / math.sqrt(3))  # 2.6458, two-sided p = 0.118 with 2 degrees of freedom
    t, p = paired_t_test(lumos, base)
    assert t == pytest.approx(t_by_hand) and p == pytest.approx(0.118, abs=0.001)
    gains = gains_table(rows, "LUMOS")
    gain_by_hand = (sum(lumos) / 3 - sum(base) / 3) / (sum(base) / 3)  # +21.2%
    assert f"| SASRec | 3 | 0.1333 | 0.1100 | {gain_by_hand:+.1%} | {t_by_hand:.2f} | {p:.3f} |" in gains
    assert "* |" not in gains
    store.save_run("LUMOS", 4, _run("LUMOS", 4, 0.13))
    store.save_run("SASRec", 4, _run("SASRec", 4, 0.10))
    four = gains_table(store.summaries(["SASRec", "LUMOS"], [1, 2, 3, 4]), "LUMOS")
    assert "* |" in four  # differences .02 .04 .01 .03: t = 3.87, p = 0.030, significant and marked
    assert gains_table(store.summaries(["LUMOS"], [1, 2, 3]), "LUMOS") == ""  # nothing to compare with


def test_matrix_cells_are_paired_model_against_model_within_each_cell(tmp_path):
    store = ComparisonStore(tmp_path)
    cells = {"attack=none,aggregator=fedavg": ([0.12, 0.15, 0.13], [0.10, 0.11, 0.12], [0.0, 0.1, 0.0], [0.0] * 3),
             "attack=bandwagon,aggregator=fedavg": ([0.10] * 3, [0.10] * 3, [0.2, 0.3, 0.4], [0.5, 0.7, 0.6])}
    labels = []
    for cell, (lumos, base, er_lumos, er_base) in cells.items():
        for model, ndcg, er in (("FedSASRec", base, er_base), ("LUMOS", lumos, er_lumos)):
            labels.append(f"{model}[{cell}]")
            for seed, (n, e) in enumerate(zip(ndcg, er, strict=True), start=1):
                record = _run(model, seed, n)
                record["test_result"] = {**record["test_result"], "er@10": e}
                store.save_run(labels[-1], seed, record)
    table = matrix_gains_table(store.summaries(labels, [1, 2, 3]), "LUMOS")
    # NDCG@20 as in the hand computation above (+21.2%, p = 0.118); ER@10: mean .0333 vs 0, difference +.0333,
    # differences 0 .1 0 -> t = 1, p = 0.423; bandwagon: ER@10 .3 vs .6, every difference -.3 -> p = 0 (marked)
    assert "| attack=none,aggregator=fedavg | FedSASRec | 3 | 0.1333 | 0.1100 | +21.2% | 0.118 | 0.0333 | 0.0000 " \
           "| +0.0333 | 0.423 |" in table
    row = next(line for line in table.splitlines() if line.startswith("| attack=bandwagon"))
    assert "| 0.3000 | 0.6000 | -0.3000" in row
    assert matrix_gains_table(store.summaries(labels[:1], [1, 2, 3]), "LUMOS") == ""  # no LUMOS row to pair


def test_a_model_not_run_yet_is_not_reported_as_failed(tmp_path):
    store = ComparisonStore(tmp_path)
    store.save_run("SASRec", 1, _run("SASRec", 1, 0.1))
    store.save_failure("CL4SRec", 1, "ValueError: broken")
    table = markdown_table(store.summaries(["SASRec", "CL4SRec", "LUMOS"], [1]))
    assert "| CL4SRec | failed | seed 1: ValueError: broken |" in table
    assert "| LUMOS | none yet | not run yet |" in table


def test_time_cells_average_and_flag_runs_whose_earlier_segments_are_unknown():
    runs = [{"wall_time_s": 100.0, "cpu_time_s": 40.0}, {"wall_time_s": 300.0, "cpu_time_s": 80.0}]
    assert time_cell(runs, "wall_time_s") == "200"
    assert time_cell(runs, "cpu_time_s") == "60"
    assert time_cell([*runs, {"wall_time_s": 50.0}], "cpu_time_s") == ""  # a run without CPU time
    partial = [runs[0], {**runs[1], "time_complete": False}]
    assert time_cell(partial, "wall_time_s") == ">=200"


def _robust_run(model, seed, attack, ratio, er10, epsilon=None):
    record = _run(model, seed, 0.1)
    record["test_result"] = {**record["test_result"], "er@10": er10, "er@20": 2 * er10}
    record["config"] = {"attack": attack, "attack_ratio": ratio, "aggregator": "median"}
    if epsilon is not None:
        record["privacy"] = {"epsilon": epsilon, "epsilon_amplified": epsilon / 2, "delta": 1e-5}
    return record


def test_exposure_and_epsilon_columns_and_the_exposure_lines(tmp_path):
    from recbole_lumos.report.plots import exposure_lines

    store = ComparisonStore(tmp_path)
    cells = {"A[attack=none]": ("none", 0.1), "A[attack=bandwagon]": ("bandwagon", 0.1)}
    for seed, (base, attacked) in enumerate([(0.01, 0.30), (0.03, 0.50)], start=1):
        store.save_run("A[attack=none]", seed, _robust_run("A", seed, "none", 0.1, base, epsilon=2.0 * seed))
        store.save_run("A[attack=bandwagon]", seed, _robust_run("A", seed, "bandwagon", 0.1, attacked))
    rows = store.summaries(list(cells), [1, 2])
    table = markdown_table(rows)
    assert "| test ER@10 | test ER@20 |" in table and "ε (local DP)" in table
    # ER@10 of the attacked cell: mean 0.40, sample std 0.1414; the no-attack cell's epsilon: mean of 2 and 4.
    assert "| A[attack=bandwagon] | 1,2 | 0.1000 ± 0.0000 | 0.2000 ± 0.0000 | 0.0500 ± 0.0000 | 0.1000 ± 0.0000 | " \
           "0.4000 ± 0.1414 | 0.8000 ± 0.2828 |" in table
    assert "| 3 (δ 1e-05) |" in table
    lines = exposure_lines([run for row in rows for run in row.runs])
    # The attacked line starts at the same model and aggregator without attack (ratio 0): mean 0.02.
    assert list(lines) == [("A", "bandwagon", "median")]
    (r0, m0, s0), (r1, m1, s1) = lines[("A", "bandwagon", "median")]
    assert (r0, r1) == (0.0, 0.1) and m0 == pytest.approx(0.02) and m1 == pytest.approx(0.4)
    assert s1 == pytest.approx(math.sqrt(0.02))
