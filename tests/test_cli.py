"""The robustness matrix on the command line: its expansion, its checks, and resuming after an interruption."""

import json

import pytest
from conftest import TINY_CLI

from recbole_lumos import cli
from recbole_lumos.cli import parse_command_line, run
from recbole_lumos.errors import ConfigurationError

TINY = TINY_CLI


def test_matrix_keys_with_several_values_expand_to_every_combination():
    command = parse_command_line(
        [
            "--model=FedSASRec,LUMOS",
            "--dataset=d",
            "--attack=none,bandwagon,scaled",
            "--aggregator=fedavg,median,norm_bound",
            "--attack_ratio=0.05,0.1",
            "--seeds=3",
            "--epochs=2",
        ]
    )
    assert command.matrix == {
        "attack": ["none", "bandwagon", "scaled"],
        "aggregator": ["fedavg", "median", "norm_bound"],
        "attack_ratio": [0.05, 0.1],
    }
    assert command.overrides == {"epochs": 2} and command.is_comparison
    rows = command.runs()
    assert len(rows) == 2 * 3 * (1 + 2 * 2)  # the no-attack cells are not repeated for every ratio
    none = {"attack": "none", "aggregator": "fedavg"}
    assert rows[0] == ("FedSASRec[attack=none,aggregator=fedavg]", "FedSASRec", none)
    assert rows[3] == (
        "FedSASRec[attack=bandwagon,aggregator=fedavg,attack_ratio=0.05]",
        "FedSASRec",
        {"attack": "bandwagon", "aggregator": "fedavg", "attack_ratio": 0.05},
    )
    single = parse_command_line(["--model=FedSASRec", "--dataset=d", "--attack=bandwagon"])
    assert single.matrix == {} and single.overrides == {"attack": "bandwagon"} and not single.is_comparison


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--attack=none,shilling", "Unknown attack 'shilling'"),
        ("--attack_ratio=0.1,2", "attack_ratio"),
        ("--aggregator=fedavg,mean", "Unknown aggregator 'mean'"),
        ("--attack=none,none", "twice"),
    ],
)
def test_a_bad_matrix_fails_before_anything_trains(argument, message, monkeypatch):
    monkeypatch.setattr(cli, "run_model", lambda *a, **k: pytest.fail("nothing may train"))
    with pytest.raises(ConfigurationError, match=message):
        run(["--model=FedSASRec", "--dataset=tiny", "--attack=bandwagon", argument])


def test_model_poisoning_of_a_central_model_is_refused_before_anything_trains(tiny_data, monkeypatch):
    monkeypatch.setattr(cli, "run_model", lambda *a, **k: pytest.fail("nothing may train"))
    with pytest.raises(ConfigurationError, match="trained centrally"):
        run(["--model=FedSASRec,SASRec", "--attack=none,scaled", f"--data_path={tiny_data}", *TINY])


def test_the_matrix_resumes_after_an_interruption(tiny_data, tmp_path, monkeypatch):
    folder = tmp_path / "matrix"
    argv = [
        "--model=FedSASRec",
        "--attack=none,bandwagon",
        "--aggregator=fedavg,median",
        "--attack_ratio=0.2",
        "--seeds=1",
        f"--data_path={tiny_data}",
        f"--results_dir={folder}",
        *TINY,
    ]
    train = cli.run_model
    calls = []

    def killed_at_the_third_run(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the process had been killed during the third run
        calls.append(args[3])
        return train(*args, **kwargs)

    monkeypatch.setattr(cli, "run_model", killed_at_the_third_run)
    with pytest.raises(KeyboardInterrupt):
        run(argv)
    labels = [
        "FedSASRec[attack=none,aggregator=fedavg]",
        "FedSASRec[attack=none,aggregator=median]",
        "FedSASRec[attack=bandwagon,aggregator=fedavg]",
        "FedSASRec[attack=bandwagon,aggregator=median]",
    ]
    assert sorted(p.name for p in (folder / "runs").glob("*.json")) == sorted(f"{x}-seed2020.json" for x in labels[:2])
    stored = (folder / "runs" / f"{labels[0]}-seed2020.json").read_text()
    monkeypatch.setattr(cli, "run_model", train)
    resumed = run(argv)
    assert [(r.config["attack"], r.config["aggregator"]) for r in resumed] == [
        ("bandwagon", "fedavg"),
        ("bandwagon", "median"),
    ]
    assert (folder / "runs" / f"{labels[0]}-seed2020.json").read_text() == stored  # not redone
    records = [json.loads((folder / "runs" / f"{x}-seed2020.json").read_text()) for x in labels]
    assert [r["label"] for r in records] == labels
    # Every cell measures the same targets; the no-attack cells give the baseline exposure.
    assert all(r["attack"]["target_items"] == records[0]["attack"]["target_items"] for r in records)
    assert [r["attack"]["malicious_clients"] for r in records] == [0, 0, 8, 8]
    table = (folder / "results.md").read_text()
    assert "test ER@10" in table and "test ER@20" in table
    assert all(f"| {label} | 2020 |" in table for label in labels)
    assert "test_er@10_mean" in (folder / "results.csv").read_text().splitlines()[0]
    assert (folder / "exposure_vs_attack_ratio.png").is_file()
    assert run(argv) == []  # everything stored: nothing runs again
