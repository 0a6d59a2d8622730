"""The CLI runs RecBole models exactly as RecBole does, and its checkpoints reload."""

import json
from pathlib import Path

import pytest
from conftest import CPU_SMALL, PROPERTIES
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed

from recbole_lumos.checkpoint import evaluate_checkpoint
from recbole_lumos.cli import run


@pytest.fixture(scope="module")
def sasrec_run(tmp_path_factory):
    """``--model=SASRec --dataset=ml-100k --epochs=2 --seed=7`` (small CPU config) through our CLI."""
    import os

    folder = tmp_path_factory.mktemp("cli")
    previous = os.getcwd()
    os.chdir(folder)
    try:
        argv = [
            "--model=SASRec",
            "--dataset=ml-100k",
            "--epochs=2",
            "--seed=7",
            f"--config_files={CPU_SMALL}",
            "--show_progress=False",
        ]
        (result,) = run(argv)
    finally:
        os.chdir(previous)
    return folder, result


def recbole_reference(extra_files: list[str]) -> dict[str, float]:
    """RecBole's own pipeline: Config -> create_dataset -> data_preparation -> get_trainer(...).fit/evaluate."""
    files = [str(PROPERTIES / "overall.yaml"), str(PROPERTIES / "dataset" / "ml-100k.yaml"), *extra_files]
    config = Config(
        model="SASRec",
        dataset="ml-100k",
        config_file_list=files,
        config_dict={"epochs": 2, "seed": 7, "show_progress": False},
    )
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    reference = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    return {k: float(v) for k, v in reference.items()}


def test_cli_gives_exactly_recbole_pipeline_metrics(sasrec_run):
    _, ours = sasrec_run
    assert ours.test_result == recbole_reference([CPU_SMALL])
    assert set(ours.test_result) == {"hit@10", "hit@20", "ndcg@10", "ndcg@20"}


def test_results_json_is_written_next_to_the_checkpoint(sasrec_run):
    _, result = sasrec_run
    saved = json.loads(Path(result.checkpoint).with_suffix(".json").read_text())
    assert saved["model"] == "SASRec" and saved["seed"] == 7
    assert saved["test_result"] == result.test_result


def test_checkpoint_reloads_with_same_test_metrics(sasrec_run):
    _, result = sasrec_run
    assert evaluate_checkpoint(result.checkpoint) == result.test_result


def test_plugin_checkpoint_reloads_and_comparison_table(tiny_data, capsys):
    argv = [
        "--model=SASRec,CL4SRec",
        "--dataset=tiny",
        f"--data_path={tiny_data}",
        "--epochs=2",
        "--hidden_size=16",
        "--inner_size=32",
        "--n_layers=1",
        "--n_heads=1",
        "--MAX_ITEM_LIST_LENGTH=10",
        "--train_batch_size=64",
        "--show_progress=False",
    ]
    sasrec, cl4srec = run(argv)
    table = capsys.readouterr().out
    assert "| SASRec |" in table and "| CL4SRec |" in table
    assert evaluate_checkpoint(cl4srec.checkpoint) == cl4srec.test_result
    assert sasrec.checkpoint != cl4srec.checkpoint


def test_a_failing_model_is_reported_and_the_others_still_run(tiny_data, capsys):
    argv = [
        "--model=LightGCN,SASRec",
        "--dataset=tiny",
        f"--data_path={tiny_data}",
        "--epochs=1",
        "--hidden_size=16",
        "--n_layers=1",
        "--n_heads=1",
        "--show_progress=False",
    ]
    results = run(argv)
    table = capsys.readouterr().out
    assert [r.model for r in results] == ["SASRec"]
    assert "| LightGCN | failed" in table


@pytest.mark.slow
def test_default_sasrec_command_matches_recbole_pipeline(isolated):
    """The issue's exact command (default SASRec, ~1-2 min per epoch on a 2-core CPU)."""
    (ours,) = run(["--model=SASRec", "--dataset=ml-100k", "--epochs=2", "--seed=7", "--show_progress=False"])
    assert ours.test_result == recbole_reference([])


def test_runs_started_in_the_same_second_get_distinct_checkpoints(tmp_path):
    from recbole_lumos.quick_start import _release_if_empty, _unique_checkpoint

    name = str(tmp_path / "saved" / "CL4SRec-Nov-26-2026_21-02-00.pth")
    first, second = _unique_checkpoint(name), _unique_checkpoint(name)
    assert first != second and Path(first).exists() and Path(second).exists()
    _release_if_empty(second)  # a run that failed before saving leaves nothing behind
    assert not Path(second).exists() and Path(first).exists()
