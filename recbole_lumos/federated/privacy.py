"""Local differential privacy: what a client does to its update before it leaves.

:func:`privatize` is the Gaussian mechanism applied on the client (local DP): the
update is clipped to a global L2 norm ``clip`` and every coordinate gets Gaussian
noise with standard deviation ``noise_multiplier * clip``. The server never sees the
un-noised update, so no trust in the server is needed.

The privatized upload is always *dense*. A sparse upload names its row indices in
the clear, and those indices reveal which items the client trained on (its own
items plus sampled negatives) -- exactly what DP is meant to hide, and noise on the
row values would not hide it. A dense upload costs full-table bandwidth; that is
the price of the guarantee.

The client's ``weight`` (its number of training positions) is sent unchanged; it is
not covered by the noise.

:func:`clip_update` is the one implementation of norm clipping; the ``norm_bound``
aggregator (:mod:`recbole_lumos.federated.aggregators`) uses it server side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.update import ClientUpdate


def update_norm(update: ClientUpdate) -> float:
    """Global L2 norm over everything the update carries (sparse rows count, indices do not).

    Rows a sparse table did not send are zero, so this equals the norm of the dense
    form of the update.
    """
    total = 0.0
    for tensor in update.dense.values():
        total += float(tensor.double().square().sum())
    for _, rows in update.sparse.values():
        total += float(rows.double().square().sum())
    return math.sqrt(total)


def clip_update(update: ClientUpdate, max_norm: float) -> ClientUpdate:
    """Scale the whole update by ``min(1, max_norm / ||update||)``; sparse stays sparse.

    Clipping the *global* norm (not each tensor separately) keeps the direction of
    the update and bounds any single client's influence, which is what both the DP
    sensitivity argument and the norm-bounding defence need. The input is not
    modified; value tensors are new, sparse indices are shared.
    """
    if not max_norm > 0 or not math.isfinite(max_norm):
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm!r}.")
    norm = update_norm(update)
    scale = 1.0 if norm <= max_norm else max_norm / norm
    return ClientUpdate(
        dense={name: tensor * scale for name, tensor in update.dense.items()},
        sparse={name: (index, rows * scale) for name, (index, rows) in update.sparse.items()},
        weight=update.weight,
    )


def privatize(
    update: ClientUpdate,
    clip: float,
    noise_multiplier: float,
    shapes: Mapping[str, torch.Size],
    generator: torch.Generator | None = None,
) -> ClientUpdate:
    """Clip and noise an update on the client (Gaussian mechanism); the result is dense.

    Steps: densify (every parameter in ``shapes``, unsent rows and parameters as
    zeros, so neither row indices nor the set of sent parameters leak), clip the
    global L2 norm to ``clip``, add ``N(0, (noise_multiplier * clip)^2)`` to every
    coordinate. Noise is drawn parameter by parameter in ``shapes`` order from
    ``generator``, so a seeded generator reproduces it exactly.
    """
    if not clip > 0 or not math.isfinite(clip):
        raise ConfigurationError(
            f"The local DP clipping norm must be a positive finite number, got {clip!r}. "
            "Set the clipping norm to the largest update norm you accept, for example 1.0."
        )
    if not noise_multiplier >= 0 or not math.isfinite(noise_multiplier):
        raise ConfigurationError(
            f"The local DP noise multiplier must be a finite number >= 0, got {noise_multiplier!r}. "
            "0 disables the noise (clipping only); larger values give stronger privacy."
        )
    full = update.to_dense(shapes)
    unknown = sorted(set(full) - set(shapes))
    if unknown:
        raise ValueError(f"The update has parameters {unknown} that are not in the model's shapes.")
    dense: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        dense[name] = full[name] if name in full else torch.zeros(shape)
    clipped = clip_update(ClientUpdate(dense=dense, weight=update.weight), clip)
    std = noise_multiplier * clip
    if std > 0:
        for name, tensor in clipped.dense.items():
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype, device=tensor.device)
            clipped.dense[name] = tensor + noise * std
    return clipped
