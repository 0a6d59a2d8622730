"""Every workaround this project needs for RecBole 1.2.1 on the pinned stack.

This is the only module that patches RecBole. Each fix is small, applied once on
import of :mod:`recbole_lumos`, and undone by nothing else.

1. **Checkpoints on torch >= 2.6.** ``torch.load`` now defaults to
   ``weights_only=True``, but RecBole pickles its ``Config`` into every checkpoint,
   so ``Trainer.evaluate(load_best_model=True)`` and ``resume_checkpoint`` raise
   ``UnpicklingError``. We give ``recbole.trainer.trainer`` (and nothing else) a view
   of ``torch`` whose ``load`` defaults to ``weights_only=False``: those files are
   the user's own checkpoints. :func:`load_trusted` does the same for our loader.
2. **Removed NumPy aliases.** RecBole 1.2.1 and ray 2.6.3 use names NumPy removed:
   ``np.float``, ``np.int``, ``np.bool`` ... (gone since 1.24; RecBole's metrics use
   ``np.float`` and ``np.bool``) and ``np.float_``, ``np.complex_``, ``np.unicode_``,
   ``np.bool8`` ... (gone in 2.0). RecBole sets the first group itself, but only
   inside ``Config.compatibility_settings()``, so a process that unpickles a config
   from a checkpoint instead of building one crashed in NDCG. :func:`restore_numpy_aliases`
   sets every alias in :data:`NUMPY_ALIASES` that is missing, on import and again
   before every trusted load; an alias NumPy still has is left alone.
3. **RecBole reads ``sys.argv``.** ``Config`` parses every ``--key=value`` of the
   process's command line. Our CLI parses the command line itself and passes the
   values as ``config_dict``; :func:`isolated_argv` hides ``sys.argv`` while a
   ``Config`` is built so nothing is read twice (and tests are not polluted).
4. **Autograd anomaly detection left on.** ``recbole/model/sequential_recommender/sine.py``
   calls ``torch.autograd.set_detect_anomaly(True)`` at import time, and importing
   any sequential model (SASRec included) imports it. Every backward pass then
   records and checks stack traces: local training ran 5-10x slower here. We import
   the package once and switch anomaly detection back off; numbers are unchanged.
5. **Plugin models are not found by name.** ``recbole.utils.get_model`` searches
   only RecBole's packages. We do not patch it: :mod:`recbole_lumos.model.registry`
   resolves names and we always pass classes (``Config(model=Class)``).
6. **Runs started together race on ``./log``.** ``recbole.utils.ensure_dir`` checks
   whether a folder exists, then creates it: of four runs started at once in one
   folder, one died with ``FileExistsError: './log'``. Every module of RecBole that
   imported it (logger, trainer, data utils, dataset) gets :func:`ensure_dir`, which
   creates the folder with ``exist_ok=True``.
7. **``data_path`` is ignored for ml-100k.** ``Config._set_default_parameters``
   always points ``ml-100k`` at the copy bundled in the recbole wheel
   (``recbole/dataset_example/ml-100k``), whatever ``data_path`` says, so a user's
   own (or modified) ml-100k was never read. :func:`_honour_data_path` restores
   RecBole's rule for every other data set, ``<data_path>/<dataset>``, when
   ``data_path`` is not the default ``dataset/`` or that folder holds the data set;
   a fresh clone without data keeps running on the bundled copy.
8. **RecBole's tensorboard folder.** RecBole's trainer writes its events to
   ``./log_tensorboard/<log file stem>``, a second log folder. :func:`_run_tensorboard`
   puts them in the run's own log folder (:mod:`recbole_lumos.run_log`), beside the
   text log.
9. **Warnings a user cannot act on.** RecBole's pandas ``FutureWarning`` messages (chained
   ``fillna(inplace=True)``), Lightning's ``LeafSpec`` deprecation, its guess of the
   batch size of our cohort batches and its tips about workers and samplers are
   filtered here, once, by message and module
   (:func:`filter_third_party_warnings`); every other warning still shows.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

NUMPY_ALIASES: dict[str, str] = {
    # Removed in NumPy 2.0 (bool8: deprecated since 1.24). RecBole's Config reads the first three;
    # ray.tune's loggers use bool8 and rllib product, alltrue and VisibleDeprecationWarning.
    "float_": "float64",
    "complex_": "complex128",
    "unicode_": "str_",
    "bool8": "bool_",
    "int_": "intp",
    "product": "prod",
    "alltrue": "all",
    "VisibleDeprecationWarning": "exceptions.VisibleDeprecationWarning",
    # Removed in NumPy 1.24; RecBole's metrics and layers use them. The values are the ones
    # Config.compatibility_settings() gives, so building a Config later changes nothing.
    "bool": "bool_",
    "int": "int_",
    "float": "float_",
    "complex": "complex_",
    "object": "object_",
    "str": "str_",
    "long": "int_",
    "unicode": "unicode_",
}
"""Alias -> its target, a dotted path inside ``numpy`` (targets restored earlier in the dict count).

Every ``np.<name>`` that the installed RecBole 1.2.1 and ray 2.6.3 sources use and
NumPy 1.26 or 2.x lacks. Not covered: ``np.asscalar`` (removed in 1.23, used only by
rllib's dm_env wrapper, not an alias of anything).
"""


def _numpy_has(module: types.ModuleType, name: str) -> bool:
    """Whether ``module.name`` resolves, without NumPy's deprecation warnings on the way."""
    if name in vars(module):
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            getattr(module, name)
        except AttributeError:
            return False
    return True


def restore_numpy_aliases(module: types.ModuleType = np) -> list[str]:
    """Set every missing alias of :data:`NUMPY_ALIASES` on ``module``; returns the names set.

    Idempotent, and a no-op for aliases the installed NumPy still has (``np.float_``
    on 1.26 stays NumPy's own object), so it can run before every checkpoint load.
    """
    restored = []
    for alias, target in NUMPY_ALIASES.items():
        if not _numpy_has(module, alias):
            value: Any = module
            for part in target.split("."):
                value = getattr(value, part)
            setattr(module, alias, value)
            restored.append(alias)
    return restored


def load_trusted(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load`` for checkpoints this project or RecBole wrote (pickled config).

    The pickled RecBole ``Config`` is not rebuilt, so RecBole never sets its NumPy
    aliases: restore them first, or evaluation fails in a fresh process.
    """
    restore_numpy_aliases()
    return torch.load(path, map_location=map_location, weights_only=False)


class _TorchWithTrustedLoad(types.ModuleType):
    """``torch`` as RecBole's trainer module sees it: identical but for ``load``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("weights_only", False)
        return torch.load(*args, **kwargs)


def _patch_trainer_torch_load() -> None:
    import recbole.trainer.trainer as recbole_trainer

    if not isinstance(recbole_trainer.torch, _TorchWithTrustedLoad):
        recbole_trainer.torch = _TorchWithTrustedLoad("torch")


@contextlib.contextmanager
def isolated_argv() -> Iterator[None]:
    """Hide the process's command line from RecBole's ``Config`` while it is built."""
    saved = sys.argv
    sys.argv = saved[:1] or ["recbole_lumos"]
    try:
        yield
    finally:
        sys.argv = saved


def _undo_global_anomaly_detection() -> None:
    import recbole.model.sequential_recommender  # noqa: F401  (imports sine.py, which turns it on)

    torch.autograd.set_detect_anomaly(False)


def ensure_dir(dir_path: str) -> None:
    """RecBole's ``ensure_dir`` without its check-then-create race (item 6)."""
    os.makedirs(dir_path, exist_ok=True)


def _patch_ensure_dir() -> None:
    import recbole.data.dataset.dataset
    import recbole.data.utils
    import recbole.trainer.trainer
    import recbole.utils
    import recbole.utils.logger
    import recbole.utils.utils

    for module in (
        recbole.utils,
        recbole.utils.utils,
        recbole.utils.logger,
        recbole.trainer.trainer,
        recbole.data.utils,
        recbole.data.dataset.dataset,
    ):
        module.ensure_dir = ensure_dir


DEFAULT_DATA_PATH = "dataset"
"""RecBole's (and ``properties/overall.yaml``'s) ``data_path``, normalised."""


def _honour_data_path() -> None:
    """Point ml-100k at ``<data_path>/ml-100k`` like every other data set (item 7)."""
    from recbole.config import Config

    original = Config._set_default_parameters
    if getattr(original, "_lumos_patched", False):
        return

    def _set_default_parameters(self: Any) -> None:
        given = self.final_config_dict.get("data_path")
        original(self)
        if self.dataset != "ml-100k" or given is None:
            return
        folder = os.path.join(str(given), self.dataset)
        if os.path.normpath(str(given)) != DEFAULT_DATA_PATH or os.path.isdir(folder):
            self.final_config_dict["data_path"] = folder

    _set_default_parameters._lumos_patched = True  # type: ignore[attr-defined]
    Config._set_default_parameters = _set_default_parameters


def _run_tensorboard(logger: Any) -> Any:
    """RecBole's ``get_tensorboard``, writing to ``<run log folder>/tensorboard`` (item 8)."""
    from torch.utils.tensorboard import SummaryWriter

    from recbole_lumos.run_log import run_log_dir

    folder = run_log_dir()
    if folder is None:
        import recbole.utils.utils

        return recbole.utils.utils.get_tensorboard(logger)
    return SummaryWriter(str(folder / "tensorboard"))


def _patch_tensorboard() -> None:
    import recbole.trainer.trainer as recbole_trainer

    recbole_trainer.get_tensorboard = _run_tensorboard


THIRD_PARTY_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # (message regex, category, module regex): item 9
    (r"A value is trying to be set on a copy of a DataFrame", FutureWarning, r"recbole\."),
    (r".*LeafSpec.* is deprecated", Warning, r"(pytorch_)?lightning"),
    (r"Trying to infer the `batch_size`", Warning, r"(pytorch_)?lightning"),
    (r".*does not have many workers", Warning, r"(pytorch_)?lightning"),
    (r".*(sampler|batch_sampler).*", Warning, r"(pytorch_)?lightning"),
)
"""Warnings filtered once, on import: (message regex, category, module regex)."""


def filter_third_party_warnings() -> None:
    """Hide the warnings of :data:`THIRD_PARTY_WARNINGS`, and only those (item 9)."""
    for message, category, module in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


restore_numpy_aliases()
_patch_trainer_torch_load()
_undo_global_anomaly_detection()
_patch_ensure_dir()
_honour_data_path()
_patch_tensorboard()
filter_third_party_warnings()
