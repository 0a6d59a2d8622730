"""What the server checks in every client update before it is aggregated, in both engines.

A client is a device the server does not control: its upload may be corrupt (a bit flip,
a half-written array, a NaN from a diverged local step) or forged. An update is refused,
logged and counted, and never reaches the aggregator, when

* a tensor holds a non-finite value (NaN or infinity);
* a parameter is not in the model, or a dense delta's shape is not the parameter's;
* a sparse table's rows are not a 1-D integer index, a row is negative or past the
  table's end (``>= rows``), or the row deltas do not fit the indices;
* the claimed FedAvg weight is not finite, is ``<= 0``, or is more than the client could
  have (its number of training positions, which the server knows from the partition).

:func:`refusal` says why an update is refused (or ``None``); the server step
(:class:`~recbole_lumos.federated.server_step.ServerStep`) calls it for every update, in
the Lightning engine and in the Flower ServerApp alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from recbole_lumos.federated.update import ClientUpdate


def refusal(update: ClientUpdate, shapes: Mapping[str, torch.Size], max_weight: float | None = None) -> str | None:
    """Why the server refuses ``update``, or ``None`` when it may be aggregated.

    ``max_weight`` is the most the client could claim (its training positions); ``None``
    checks only that the weight is finite and positive.
    """
    weight = update.weight
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        return f"weight {weight!r} is not a finite positive number"
    if max_weight is not None and weight > max_weight:
        return f"weight {weight:g} is more than the client's {max_weight:g} training positions"
    for name, delta in update.dense.items():
        if name not in shapes:
            return f"parameter {name!r} is not in the model"
        if tuple(delta.shape) != tuple(shapes[name]):
            return f"{name!r} has shape {tuple(delta.shape)}, the model's is {tuple(shapes[name])}"
        if not delta.is_floating_point() or not bool(torch.isfinite(delta).all()):
            return f"{name!r} holds non-finite values"
    for name, (index, rows) in update.sparse.items():
        if name not in shapes:
            return f"parameter {name!r} is not in the model"
        shape = tuple(shapes[name])
        if not shape or index.dim() != 1 or index.is_floating_point() or index.dtype == torch.bool:
            return f"sparse {name!r} needs a 1-D integer row index, got {index.dtype} {tuple(index.shape)}"
        if tuple(rows.shape) != (index.shape[0], *shape[1:]):
            return f"sparse {name!r} has {tuple(rows.shape)} row deltas for {index.shape[0]} rows of {shape}"
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= shape[0]):
            return f"sparse {name!r} sends rows outside 0..{shape[0] - 1}"
        if not rows.is_floating_point() or not bool(torch.isfinite(rows).all()):
            return f"sparse {name!r} holds non-finite values"
    return None
