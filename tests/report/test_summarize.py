import pytest

from recbole_lumos.report.summarize import mean_std, summarize


def _run(model, seed, ndcg20):
    metrics = {"hit@10": 0.1, "hit@20": 0.2, "ndcg@10": 0.05, "ndcg@20": ndcg20}
    return {"model": model, "seed": seed, "test_result": metrics, "wall_time_s": 10.0 * seed, "epochs": seed}


def test_mean_and_sample_std_by_hand():
    mean, std = mean_std([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2)
    assert std == pytest.approx(0.1)  # sqrt(((-.1)^2 + 0 + .1^2) / (3 - 1))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_table_has_one_row_per_model_with_mean_std():
    table = summarize([_run("SASRec", 1, 0.1), _run("SASRec", 2, 0.3), _run("CL4SRec", 1, 0.4)])
    rows = table.splitlines()
    assert len(rows) == 4
    sasrec = next(r for r in rows if r.startswith("| SASRec"))
    assert "| 1,2 |" in sasrec and "0.2000 ± 0.1414" in sasrec and "| 1.5 | 15 |" in sasrec


def test_train_modes_are_separate_rows():
    central = {**_run("SASRec", 1, 0.1), "train_mode": "all_positions"}
    table = summarize([_run("SASRec", 1, 0.2), central])
    assert "| SASRec (all_positions) |" in table and "| SASRec |" in table


def test_configs_that_differ_between_runs_of_a_model_get_their_own_rows():
    def cl4srec(seed, sim, tau, ndcg20):
        return {**_run("CL4SRec", seed, ndcg20), "config": {"sim": sim, "tau": tau, "hidden_size": 32}}

    table = summarize([cl4srec(1, "dot", 1.0, 0.1), cl4srec(2, "dot", 1.0, 0.3), cl4srec(1, "cos", 0.5, 0.4)])
    assert "| CL4SRec (sim=dot, tau=1.0) | 1,2 |" in table
    assert "| CL4SRec (sim=cos, tau=0.5) | 1 |" in table
    alone = summarize([{**_run("SASRec", 1, 0.1), "config": {"window_stride": 5}, "train_mode": "all_positions"}])
    assert "| SASRec (all_positions) |" in alone
