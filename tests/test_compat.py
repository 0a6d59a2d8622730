"""NumPy aliases that RecBole 1.2.1 and ray 2.6.3 need, restored on NumPy 1.26 and 2.x alike.

The NumPy installed here is 1.26; a NumPy without the aliases is simulated by
removing them from the ``numpy`` module (and from its lazy ``__getattr__``) for the
length of one test.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from recbole_lumos.compat import NUMPY_ALIASES, restore_numpy_aliases
from recbole_lumos.config import build_config

REQUIRED = {
    "complex_": np.complex128,
    "unicode_": np.str_,
    "float_": np.float64,
    "bool8": np.bool_,
    "int_": np.intp,
    "float": np.float64,
    "int": np.intp,
    "bool": np.bool_,
    "object": np.object_,
    "str": np.str_,
    "long": np.intp,
    "unicode": np.str_,
    "complex": np.complex128,
}
"""The aliases issue 18 names, and what each must be (RecBole's own choices, on 64-bit Linux)."""

NUMPY_2_REMOVED = frozenset(
    {
        # numpy/_expired_attrs_2_0.py of NumPy 2.x, plus 2.0 removals that have no message there.
        "DataSource", "Inf", "Infinity", "NINF", "NZERO", "NaN", "PINF", "PZERO", "add_docstring", "add_newdoc",
        "add_newdoc_ufunc", "alltrue", "asfarray", "byte_bounds", "cast", "cfloat", "clongfloat",
        "compare_chararrays", "complex_", "deprecate", "deprecate_with_doc", "fastCopyAndTranspose",
        "find_common_type", "float_", "format_parser", "get_array_wrap", "geterrobj", "infty", "issctype",
        "issubclass_", "issubsctype", "longcomplex", "longfloat", "lookfor", "mat", "maximum_sctype", "nbytes",
        "obj2sctype", "recfromcsv", "recfromtxt", "round_", "safe_eval", "sctype2char", "sctypes", "set_numeric_ops",
        "set_string_function", "seterrobj", "singlecomplex", "sometrue", "source", "string_", "tracemalloc_domain",
        "unicode_", "who", "product", "cumproduct", "bool8", "int0", "uint0", "object0", "str0", "bytes0", "void0",
        "VisibleDeprecationWarning", "ComplexWarning", "AxisError", "TooHardError", "ModuleDeprecationWarning",
        "RankWarning",
    }
)
"""Names NumPy 1.26 has (some with a deprecation warning) that NumPy 2 dropped from its namespace."""

NOT_ALIASES = {
    "arrays": "only in docstrings ('np.arrays')",
    "ndarrays": "only in docstrings ('np.ndarrays')",
    "asscalar": "removed in NumPy 1.23, used only by rllib's dm_env wrapper; a function, not an alias",
}


def remove_from_numpy(monkeypatch: pytest.MonkeyPatch, names: Iterable[str]) -> None:
    """Make ``np.<name>`` raise AttributeError, as on a NumPy that removed it, until the test ends."""
    names = frozenset(names)
    for name in names:
        if name not in vars(np):  # served by numpy's __getattr__ (bool8) or absent (float on 1.26)
            monkeypatch.setattr(np, name, None, raising=False)  # so teardown deletes what compat sets
        monkeypatch.delattr(np, name)
    lazy = vars(np)["__getattr__"]

    def numpy_getattr(attr: str):
        if attr in names:
            raise AttributeError(f"module 'numpy' has no attribute {attr!r} (removed for this test)")
        return lazy(attr)

    monkeypatch.setattr(np, "__getattr__", numpy_getattr)


IN_NUMPY_2 = {"int_", "bool", "long"}
"""Aliases NumPy 2 has again (or kept): a NumPy 2 namespace lacks only the others."""


@pytest.fixture
def numpy_2_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """NumPy as version 2 has it: without every alias compat restores except ``int_``, ``bool``, ``long``."""
    remove_from_numpy(monkeypatch, (set(NUMPY_ALIASES) | set(REQUIRED)) - IN_NUMPY_2)
    assert not hasattr(np, "float_") and not hasattr(np, "float") and not hasattr(np, "bool8")


@pytest.fixture
def numpy_without_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    """NumPy without any alias compat restores or issue 18 names (``int_`` too)."""
    remove_from_numpy(monkeypatch, set(NUMPY_ALIASES) | set(REQUIRED))
    assert not hasattr(np, "int_") and not hasattr(np, "long")


def ml_100k_config():
    return build_config("SASRec", "ml-100k", overrides={"data_path": str(SHARED_DATA), "show_progress": False})


def test_recbole_config_fails_without_the_aliases(numpy_2_namespace) -> None:
    """The simulation is real: RecBole's Config reads np.float_ and breaks without compat."""
    with pytest.raises(AttributeError, match="float_"):
        ml_100k_config()


def test_recbole_config_builds_once_compat_restores_the_aliases(numpy_2_namespace) -> None:
    restored = restore_numpy_aliases()
    assert set(REQUIRED) - IN_NUMPY_2 <= set(restored)
    config = ml_100k_config()
    assert config["dataset"] == "ml-100k" and config["data_path"].endswith("ml-100k")
    assert np.float is np.float64 and np.unicode_ is np.str_


def test_compat_restores_every_alias_issue_18_names(numpy_without_aliases) -> None:
    assert set(REQUIRED) <= set(restore_numpy_aliases())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # restored aliases are plain attributes, not deprecated lookups
        for name, expected in REQUIRED.items():
            assert getattr(np, name) is expected, name
    assert np.product is np.prod and np.alltrue is np.all
    assert restore_numpy_aliases() == []  # idempotent


def test_recbole_metrics_run_without_a_config_after_compat(numpy_2_namespace) -> None:
    """The reload path in one process: RecBole's NDCG (np.float) with no Config built."""
    from recbole.evaluator.metrics import NDCG

    restore_numpy_aliases()
    metric = NDCG({"topk": [2], "metric_decimal_place": 4})
    result = metric.metric_info(np.array([[False, True], [True, False]]), np.array([1, 1]))
    assert result[:, -1].tolist() == pytest.approx([1 / np.log2(3), 1.0])


@pytest.mark.skipif(not np.__version__.startswith("1.26"), reason="checks NumPy 1.26's own aliases")
def test_aliases_numpy_1_26_has_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """On NumPy 1.26 an alias that exists is not replaced: compat is a no-op for it."""
    for name in ("float_", "complex_", "unicode_", "int_"):
        sentinel = type(name, (), {})
        monkeypatch.setattr(np, name, sentinel)
        assert restore_numpy_aliases() == []
        assert getattr(np, name) is sentinel
    assert "bool8" not in vars(np)  # still NumPy's lazy, deprecated alias: compat did not set it


def used_numpy_names() -> set[str]:
    """Every ``np.<name>`` in the installed RecBole and ray sources."""
    import ray
    import recbole

    names: set[str] = set()
    for package in (recbole, ray):
        for source in Path(package.__file__).parent.rglob("*.py"):
            names.update(re.findall(r"\bnp\.([A-Za-z_][A-Za-z_0-9]*)", source.read_text(errors="ignore")))
    return names


def test_every_removed_name_recbole_and_ray_use_is_restored() -> None:
    """Fails when compat misses a name that NumPy 1.26 or 2 lacks and RecBole or ray uses."""
    # NumPy 1.26's own records of what it removed or deprecated (compat has set some since).
    removed_by_numpy = set(NUMPY_2_REMOVED)
    for record in ("__former_attrs__", "__deprecated_attrs__", "__future_scalars__"):
        removed_by_numpy |= set(getattr(np, record, ()))
    used = used_numpy_names()
    assert {"float", "bool8", "float_", "zeros"} <= used  # the scan works
    removed = {name for name in used if name in removed_by_numpy or not hasattr(np, name)}
    assert {"float", "int", "bool", "long", "float_", "bool8"} <= removed
    uncovered = removed - set(NUMPY_ALIASES) - set(NOT_ALIASES)
    assert not uncovered, f"RecBole/ray use {sorted(uncovered)}, which compat does not restore"


def test_a_folder_created_by_a_parallel_run_is_no_error(tmp_path: Path) -> None:
    """RecBole's ensure_dir checked, then created: a run that lost the race died with FileExistsError."""
    import threading

    import recbole.utils.logger
    import recbole.utils.utils

    from recbole_lumos.compat import ensure_dir

    assert recbole.utils.logger.ensure_dir is ensure_dir and recbole.utils.utils.ensure_dir is ensure_dir
    folder = tmp_path / "log"
    real_exists = __import__("os").path.exists
    # the race made certain: every caller sees "missing", then all create
    threads = [threading.Thread(target=ensure_dir, args=(str(folder),)) for _ in range(4)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("os.path.exists", lambda path: False if str(path) == str(folder) else real_exists(path))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert folder.is_dir()
    ensure_dir(str(folder))  # exists already: nothing happens


def test_ml_100k_is_read_from_data_path(tmp_path: Path) -> None:
    config = build_config("SASRec", "ml-100k", overrides={"data_path": str(tmp_path)})
    assert config["data_path"] == str(tmp_path / "ml-100k")
    # the default data_path without a dataset/ml-100k folder keeps RecBole's bundled copy (a fresh clone runs)
    assert Path(build_config("SASRec", "ml-100k")["data_path"]).resolve().parts[-2:] == ("dataset_example", "ml-100k")
    (tmp_path / "dataset" / "ml-100k").mkdir(parents=True)
    assert build_config("SASRec", "ml-100k")["data_path"] == str(Path("dataset") / "ml-100k")  # cwd is tmp_path


@pytest.mark.long
def test_a_modified_ml_100k_under_data_path_is_the_one_trained_on(tmp_path: Path) -> None:
    """Keep the first 100 users of ml-100k in a copy: the run trains 100 clients and records that copy."""
    from conftest import TINY_ENGINE

    from recbole_lumos.quick_start import run_model

    folder = tmp_path / "data" / "ml-100k"
    folder.mkdir(parents=True)
    lines = (SHARED_DATA / "ml-100k" / "ml-100k.inter").read_text().splitlines()
    kept = [line for line in lines[1:] if int(line.split("\t")[0]) <= 100]
    (folder / "ml-100k.inter").write_text("\n".join([lines[0], *kept]) + "\n")
    overrides = {**TINY_ENGINE, "data_path": str(tmp_path / "data"), "epochs": 1, "client_batch": 8}
    overrides |= {"num_negatives": 8, "federated_eval_step": 1, "checkpoint_dir": str(tmp_path / "saved")}
    result = run_model("FedSASRec", "ml-100k", overrides=overrides)
    assert result.num_clients == 100
    assert result.data["path"] == str(folder.resolve())
    inter = result.data["files"]["ml-100k.inter"]
    assert inter["bytes"] == (folder / "ml-100k.inter").stat().st_size
    import hashlib

    assert inter["sha256"] == hashlib.sha256((folder / "ml-100k.inter").read_bytes()).hexdigest()
