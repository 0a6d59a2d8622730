"""A checkpoint reloads and evaluates in a fresh Python process, not only in the one that trained it.

RecBole sets ``np.float`` and its siblings only while a ``Config`` is built; a reload
unpickles its config instead, so before the fix a fresh process crashed inside
RecBole's NDCG with ``module 'numpy' has no attribute 'float'``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_tiny_dataset

from recbole_lumos.checkpoint import evaluate_checkpoint
from recbole_lumos.cli import run

RELOAD = """
import json, sys
from recbole_lumos.checkpoint import evaluate_checkpoint
json.dump(evaluate_checkpoint(sys.argv[1]), open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """One epoch of a tiny SASRec through the CLI; returns its folder and result."""
    folder = tmp_path_factory.mktemp("reload")
    data = write_tiny_dataset(folder / "data")
    argv = [
        "--model=SASRec",
        "--dataset=tiny",
        f"--data_path={data}",
        "--epochs=1",
        "--hidden_size=16",
        "--inner_size=32",
        "--n_layers=1",
        "--n_heads=1",
        "--MAX_ITEM_LIST_LENGTH=10",
        "--train_batch_size=64",
        "--show_progress=False",
    ]
    previous = os.getcwd()
    os.chdir(folder)
    try:
        (result,) = run(argv)
    finally:
        os.chdir(previous)
    return folder, result


def test_checkpoint_evaluates_in_a_fresh_process_with_the_same_metrics(tiny_run, tmp_path: Path) -> None:
    folder, result = tiny_run
    out = tmp_path / "metrics.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", RELOAD, str(result.checkpoint), str(out)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(out.read_text())
    assert fresh == result.test_result
    assert fresh == evaluate_checkpoint(result.checkpoint)
