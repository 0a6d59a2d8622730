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


def _norm(update: ClientUpdate) -> torch.Tensor | None:
    """Global L2 norm as a float64 scalar on the update's device (``None`` when it carries nothing).

    Summed tensor by tensor in float64, as :func:`update_norm` always did, so the value
    is the same to the bit; it stays on the device, so clipping needs no host sync.
    """
    total: torch.Tensor | None = None
    for tensor in [*update.dense.values(), *(rows for _, rows in update.sparse.values())]:
        part = tensor.double().square().sum()
        total = part if total is None else total + part.to(total.device)
    return None if total is None else total.sqrt()


def update_norm(update: ClientUpdate) -> float:
    """Global L2 norm over everything the update carries (sparse rows count, indices do not).

    Rows a sparse table did not send are zero, so this equals the norm of the dense
    form of the update.
    """
    norm = _norm(update)
    return 0.0 if norm is None else float(norm)


def clip_update(update: ClientUpdate, max_norm: float) -> ClientUpdate:
    """Scale the whole update by ``min(1, max_norm / ||update||)``; sparse stays sparse.

    Clipping the *global* norm (not each tensor separately) keeps the direction of
    the update and bounds any single client's influence, which is what both the DP
    sensitivity argument and the norm-bounding defence need. The input is not
    modified; value tensors are new, sparse indices are shared. The scale is computed
    on the update's device (no host round trip per client).
    """
    if not max_norm > 0 or not math.isfinite(max_norm):
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm!r}.")
    norm = _norm(update)
    if norm is None:  # the update carries no tensor: nothing to scale
        return ClientUpdate(dense={}, sparse={}, weight=update.weight)
    # max_norm / norm >= 1 exactly when norm <= max_norm: the clamp is min(1, max_norm / norm).
    scale = (max_norm / norm).clamp(max=1.0)
    return ClientUpdate(
        dense={name: tensor * scale.to(tensor.device) for name, tensor in update.dense.items()},
        sparse={name: (index, rows * scale.to(rows.device)) for name, (index, rows) in update.sparse.items()},
        weight=update.weight,
    )


def _densify(update: ClientUpdate, shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Every parameter of ``shapes`` as a full tensor on the device (and dtype) of the update's data.

    Unsent rows and parameters are zeros created where the data already is, so a
    CUDA update never meets a CPU tensor.
    """
    tensors = [*update.dense.values(), *(rows for _, rows in update.sparse.values())]
    device = tensors[0].device if tensors else None
    dtype = tensors[0].dtype if tensors else None
    out = dict(update.dense)
    for name, (index, rows) in update.sparse.items():
        full = rows.new_zeros(shapes[name])
        full[index.to(rows.device)] = rows
        out[name] = full
    for name, shape in shapes.items():
        if name not in out:
            out[name] = torch.zeros(shape, dtype=dtype, device=device)
    return out


def _gaussian(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on ``generator``'s device, moved to ``like``'s.

    A CPU generator then serves CUDA tensors, and one seed gives the same noise
    whatever device the update is on.
    """
    device = like.device if generator is None else generator.device
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


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
    ``generator`` on the generator's own device, so a seeded generator reproduces it
    exactly, on any device. Every tensor is created on the device of the update's data.
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
    unknown = sorted((set(update.dense) | set(update.sparse)) - set(shapes))
    if unknown:
        raise ValueError(f"The update has parameters {unknown} that are not in the model's shapes.")
    full = _densify(update, shapes)
    dense = {name: full[name] for name in shapes}
    clipped = clip_update(ClientUpdate(dense=dense, weight=update.weight), clip)
    std = noise_multiplier * clip
    if std > 0:
        for name, tensor in clipped.dense.items():
            clipped.dense[name] = tensor + _gaussian(tensor, generator) * std
    return clipped
