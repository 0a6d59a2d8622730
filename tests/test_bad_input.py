"""Bad input exits non-zero with one clear paragraph, no traceback, and touches nothing written."""

import subprocess
import sys
from pathlib import Path

from conftest import REPO, TINY_CLI

SCRIPT = str(REPO / "run_recbole_lumos.py")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_unknown_model_names_close_matches(isolated):
    proc = run_cli("--model=SASrec", "--dataset=ml-100k", cwd=isolated)
    assert_clean_failure(proc, "Unknown model 'SASrec'", "'SASRec'")
    # a name no RecBole package holds: RecBole's own search would import its optional-dependency models
    proc = run_cli("--model=NoSuchModel", "--dataset=ml-100k", cwd=isolated)
    assert_clean_failure(proc, "Unknown model 'NoSuchModel'")


def test_a_seed_given_as_a_count_is_refused_before_anything_runs(isolated):
    proc = run_cli("--model=SASRec", "--dataset=ml-100k", "--seeds=2021", cwd=isolated)
    assert_clean_failure(proc, "--seeds=2021", "--seed=2021 --seeds=1")
    assert not (isolated / "saved").exists()


def test_missing_dataset_says_where_to_put_files(isolated):
    saved = isolated / "saved"
    saved.mkdir()
    (saved / "SASRec-earlier.pth").write_bytes(b"keep me")
    proc = run_cli("--model=SASRec", "--dataset=my-data", f"--data_path={isolated / 'data'}", cwd=isolated)
    assert_clean_failure(proc, "my-data", str(isolated / "data" / "my-data"))
    assert (saved / "SASRec-earlier.pth").read_bytes() == b"keep me"
    assert sorted(p.name for p in saved.iterdir()) == ["SASRec-earlier.pth"]


def test_malformed_header_names_the_column(tiny_data, isolated):
    inter = tiny_data / "tiny" / "tiny.inter"
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join(["user_id:token\titem_id\ttimestamp:float", *lines[1:]]) + "\n")
    proc = run_cli("--model=SASRec", "--dataset=tiny", f"--data_path={tiny_data}", cwd=isolated)
    assert_clean_failure(proc, "malformed", "'item_id'", "name:type")


def test_missing_time_column_is_explained(tiny_data, isolated):
    inter = tiny_data / "tiny" / "tiny.inter"
    rows = [line.rsplit("\t", 1)[0] for line in inter.read_text().splitlines()]
    inter.write_text("\n".join(["user_id:token\titem_id:token", *rows[1:]]) + "\n")
    proc = run_cli("--model=SASRec", "--dataset=tiny", f"--data_path={tiny_data}", cwd=isolated)
    assert_clean_failure(proc, "no column 'timestamp'", "TIME_FIELD")


def test_a_target_item_outside_the_catalogue_is_named(tiny_data, isolated):
    proc = run_cli(
        "--model=FedSASRec", "--dataset=tiny", f"--data_path={tiny_data}", "--attack=bandwagon",
        "--target_items=['i3','no-such-item']", "--epochs=1", cwd=isolated,
    )
    assert_clean_failure(proc, "'no-such-item'", "not in the catalogue")


def assert_one_paragraph(proc: subprocess.CompletedProcess) -> None:
    """The whole error output is one paragraph: a single ``error: ...`` line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_a_bad_enumerated_value_lists_the_valid_values_before_any_data_loads(isolated):
    proc = run_cli("--model=FedSASRec", "--dataset=ml-100k", "--local_loss=foo", cwd=isolated)
    assert_clean_failure(proc, "local_loss is 'foo'", "ce, sampled_ce, bce", "--local_loss=")
    assert_one_paragraph(proc)
    assert not (isolated / "log").exists()  # nothing was set up, no data was read


def test_an_unknown_aggregator_lists_the_valid_ones(isolated):
    proc = run_cli("--model=FedSASRec", "--dataset=ml-100k", "--aggregator=fedavgg", cwd=isolated)
    assert_clean_failure(proc, "Unknown aggregator 'fedavgg'", "fedavg, fedprox")
    assert_one_paragraph(proc)


def test_a_misspelt_boolean_is_refused(isolated):
    proc = run_cli("--model=FedSASRec", "--dataset=ml-100k", "--sparse_upload=Flase", cwd=isolated)
    assert_clean_failure(proc, "sparse_upload is 'Flase'", "True or False", "--sparse_upload=False")
    assert_one_paragraph(proc)


def test_a_number_out_of_range_is_refused(isolated):
    proc = run_cli("--model=FedSASRec", "--dataset=ml-100k", "--client_fraction=1.5", cwd=isolated)
    assert_clean_failure(proc, "client_fraction is 1.5", "(0, 1]")
    assert_one_paragraph(proc)


def test_a_misspelt_key_warns_with_the_key_meant_and_strict_refuses_it(tiny_data, isolated):
    args = ["--model=FedSASRec", f"--data_path={tiny_data}", *TINY_CLI]
    proc = run_cli(*args, "--local_los=ce", cwd=isolated)
    assert proc.returncode == 0, proc.stderr
    assert "warning: Unknown config key on the command line: 'local_los' (did you mean 'local_loss'?)" in proc.stderr
    strict = run_cli(*args, "--local_los=ce", "--strict", cwd=isolated)
    assert_clean_failure(strict, "'local_los' (did you mean 'local_loss'?)")
    assert_one_paragraph(strict)


def test_a_non_numeric_timestamp_names_the_file_line_and_column(tiny_data, isolated):
    inter = tiny_data / "tiny" / "tiny.inter"
    lines = inter.read_text().splitlines()
    user, item, _ = lines[4].split("\t")
    lines[4] = f"{user}\t{item}\tyesterday"
    inter.write_text("\n".join(lines) + "\n")
    proc = run_cli("--model=SASRec", "--dataset=tiny", f"--data_path={tiny_data}", cwd=isolated)
    assert_clean_failure(proc, f"{inter}, line 5, column 3 (timestamp:float)", "'yesterday' is not a number", "Fix")
    assert_one_paragraph(proc)
