"""Shared fixtures: an isolated working folder, real data paths and a tiny synthetic dataset."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECBOLE_LUMOS_DATA", REPO.parent / "shared" / "datasets"))
PROPERTIES = REPO / "properties"
CPU_SMALL = str(PROPERTIES / "experiment" / "cpu-small.yaml")
TINY_ENGINE = {
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 10,
    "hidden_dropout_prob": 0.0,
    "attn_dropout_prob": 0.0,
    "show_progress": False,
}
"""A SASRec-family model small enough to train federated on the tiny data set in seconds."""
TINY_CLI = [
    "--dataset=tiny",
    "--epochs=1",
    "--hidden_size=16",
    "--inner_size=32",
    "--n_layers=1",
    "--n_heads=1",
    "--MAX_ITEM_LIST_LENGTH=10",
    "--show_progress=False",
    "--client_batch=8",
    "--num_negatives=8",
    "--federated_eval_step=1",
]
"""The same as command-line flags, for the comparison command on the tiny data set."""

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEVICES = ("cpu", "cuda")
"""Tests that take a ``device`` argument run on each; the ``cuda`` cases are deselected where CUDA is absent."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in DEVICES])


LONG_TEST_FILES = (
    "federated/test_engine.py",
    "federated/test_flower.py",
    "generation/test_lumos_training.py",
    "generation/test_tri_view_activity.py",
    "report/test_comparison.py",
    "report/test_user_groups.py",
    "test_checkpoint_reload.py",
    "test_cli.py",
    "test_quick_start.py",
)
"""Files whose tests train end to end (Lightning, RecBole's trainer, Flower): each test is marked ``long``.
A single test elsewhere is marked with ``@pytest.mark.long``."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of :data:`LONG_TEST_FILES` ``long``; deselect (not skip) the CUDA cases on a machine
    without CUDA: the summary counts them."""
    tests = Path(__file__).resolve().parent
    for item in items:
        path = Path(str(item.path)).resolve()
        if path.is_relative_to(tests) and path.relative_to(tests).as_posix() in LONG_TEST_FILES:
            item.add_marker(pytest.mark.long)
    import torch

    if torch.cuda.is_available():
        return
    deselected = [item for item in items if item.get_closest_marker("cuda") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker("cuda") is None]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every test in its own folder (RecBole writes log/ and saved/ to the cwd) with a clean argv."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    return tmp_path


def write_tiny_dataset(root: Path, name: str = "tiny", n_users: int = 40, n_items: int = 30, seed: int = 0) -> Path:
    """A synthetic dataset in RecBole atomic format: users walk through item 'genres' in time order."""
    rng = random.Random(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for user in range(1, n_users + 1):
        start = rng.randrange(n_items)
        length = rng.randint(6, 14)
        for step in range(length):
            item = (start + step + rng.choice([0, 0, 1])) % n_items + 1
            rows.append(f"u{user}\ti{item}\t{1_000_000 + user * 1000 + step}")
    (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(rows) + "\n")
    titles = [f"i{i}\tItem number {i}\tgenre{i % 5}" for i in range(1, n_items + 1)]
    (folder / f"{name}.item").write_text("item_id:token\ttitle:token_seq\tgenre:token_seq\n" + "\n".join(titles) + "\n")
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """Parent folder (``data_path``) holding the ``tiny`` dataset."""
    return write_tiny_dataset(tmp_path / "data")
