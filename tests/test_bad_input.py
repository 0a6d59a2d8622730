"""Bad input exits non-zero with one clear paragraph, no traceback, and touches nothing written."""

import subprocess
import sys
from pathlib import Path

from conftest import REPO

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
