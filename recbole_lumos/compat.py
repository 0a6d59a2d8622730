"""Every workaround this project needs for RecBole 1.2.1 on the pinned stack.

This is the only module that patches RecBole. Each fix is small, applied once on
import of :mod:`recbole_lumos`, and undone by nothing else.

1. **Checkpoints on torch >= 2.6.** ``torch.load`` now defaults to
   ``weights_only=True``, but RecBole pickles its ``Config`` into every checkpoint,
   so ``Trainer.evaluate(load_best_model=True)`` and ``resume_checkpoint`` raise
   ``UnpicklingError``. We give ``recbole.trainer.trainer`` (and nothing else) a view
   of ``torch`` whose ``load`` defaults to ``weights_only=False``: those files are
   the user's own checkpoints. :func:`load_trusted` does the same for our loader.
2. **NumPy 2 aliases.** RecBole's ``Config`` uses ``np.float_``; ray 2.6.3 uses
   ``np.bool8``. We pin ``numpy<2``; on a newer NumPy we restore the aliases rather
   than fail at import.
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
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

for _alias, _target in (("float_", "float64"), ("bool8", "bool_"), ("int_", "int64")):
    if not hasattr(np, _alias):  # NumPy >= 2
        setattr(np, _alias, getattr(np, _target))


def load_trusted(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load`` for checkpoints this project or RecBole wrote (pickled config)."""
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


_patch_trainer_torch_load()
_undo_global_anomaly_detection()
