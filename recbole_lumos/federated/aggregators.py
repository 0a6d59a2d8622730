"""Server-side aggregation of client updates, behind one small interface.

Every aggregator is fed a round's :class:`~recbole_lumos.federated.update.ClientUpdate`
objects one at a time with :meth:`Aggregator.add` and produces the global update
with :meth:`Aggregator.result`: one full-shape tensor per model parameter (a
parameter nobody sent is all zeros), after which it is empty again for the next
round. The same objects serve the in-process engine and a Flower server strategy,
so they hold no framework state and need nothing but ``torch``.

Memory: ``fedavg``, ``fedprox`` and ``norm_bound`` are *streaming*: they keep
running sums, O(model) memory however many clients report. ``median``,
``trimmed_mean``, ``krum`` and ``multi_krum`` need all updates at once, so they keep
the list of updates and materialise an ``[n_clients, *shape]`` stack per parameter
(or an ``[n_clients, model_size]`` matrix for Krum) in :meth:`result`:
O(n_clients x model) memory. Use them with moderate numbers of clients per round.

Robust aggregators (median, trimmed mean, Krum) ignore ``update.weight``: the weight
is the client's own claim and a malicious client could inflate it. Multi-Krum uses
the weights only among the clients it selected.

Pick one by name with :func:`build_aggregator`; :data:`AGGREGATORS` lists them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.privacy import clip_update
from recbole_lumos.federated.update import ClientUpdate

REQUIRED: Any = object()
"""Marker in :attr:`Aggregator.options`: the config key has no default."""


def _row_shape(shape: torch.Size) -> torch.Size:
    """Shape of the per-row weight sums: the first dimension (a scalar parameter has none)."""
    return shape[:1]


def _broadcast(row_values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reshape per-row values so they broadcast against a full parameter."""
    if len(shape) == 0:
        return row_values
    return row_values.reshape(shape[:1] + (1,) * (len(shape) - 1))


def _check_update(update: ClientUpdate, shapes: Mapping[str, torch.Size]) -> None:
    """Catch shape mismatches at add() time, where the culprit is still known."""
    if not math.isfinite(update.weight) or update.weight < 0:
        raise ValueError(f"A client update's weight must be finite and >= 0, got {update.weight!r}.")
    for name, tensor in update.dense.items():
        if name not in shapes:
            raise ValueError(f"The update has a parameter {name!r} that is not in the model.")
        if tensor.shape != shapes[name]:
            raise ValueError(
                f"The update's {name!r} has shape {tuple(tensor.shape)}, the model's is {tuple(shapes[name])}."
            )
    for name, (index, rows) in update.sparse.items():
        if name not in shapes:
            raise ValueError(f"The update has a parameter {name!r} that is not in the model.")
        shape = shapes[name]
        if len(shape) == 0 or index.dim() != 1 or rows.shape != (index.shape[0], *shape[1:]):
            raise ValueError(
                f"The update's sparse {name!r} has index shape {tuple(index.shape)} and rows shape "
                f"{tuple(rows.shape)}, which do not fit the model's shape {tuple(shape)}."
            )


def _dense_full(update: ClientUpdate, shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Every model parameter as a full tensor; unsent rows and parameters are zeros."""
    sent = update.to_dense(shapes)
    device = _device_of(sent.values())
    return {name: sent[name] if name in sent else torch.zeros(shape, device=device) for name, shape in shapes.items()}


def _device_of(tensors, default: torch.device | str = "cpu") -> torch.device:
    """The device of the first of ``tensors`` (the updates'), for the zeros of unsent parameters."""
    return next((t.device for t in tensors), torch.device(default))


def _config_value(config: Mapping[str, Any], key: str, default: Any) -> Any:
    """``config[key]`` if set (not None), else ``default``; RecBole's Config has no ``.get``."""
    if key in config:
        value = config[key]
        if value is not None:
            return value
    return default


def _number(name: str, key: str, value: Any, kind: type = float) -> Any:
    """Coerce a config option to ``kind`` or say clearly which option is wrong."""
    try:
        if kind is int:
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return number
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"The aggregator {name!r} needs {key} to be a finite {'integer' if kind is int else 'number'}, "
            f"got {value!r}. Fix {key} in your config file or on the command line (--{key}=...)."
        ) from None


class Aggregator(ABC):
    """Folds client updates into one global update per round.

    Subclasses declare their config keys in :attr:`options` (key -> default, or
    :data:`REQUIRED`); the constructor takes the same names as keyword arguments and
    validates them, raising :class:`~recbole_lumos.errors.ConfigurationError`.
    """

    name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, shapes: Mapping[str, torch.Size], **options: Any) -> None:
        if options:
            raise TypeError(f"{type(self).__name__} got unknown options {sorted(options)}.")
        self.shapes: dict[str, torch.Size] = {name: torch.Size(shape) for name, shape in shapes.items()}
        self.num_updates = 0
        """Updates added since the last :meth:`result`."""
        self.device = torch.device("cpu")
        """Where the updates live (set by :meth:`add`): unsent parameters' zeros go there too."""
        self._sent: dict[str, torch.Tensor] = {}
        self.sent_rows: dict[str, torch.Tensor] = {}
        """After :meth:`result`: per sparse-capable parameter, which rows any client sent
        that round (a lazy server optimiser steps only those)."""

    def add(self, update: ClientUpdate) -> None:
        """Fold in one client's update for the current round."""
        _check_update(update, self.shapes)
        self.device = _device_of([*update.dense.values(), *(rows for _, rows in update.sparse.values())], self.device)
        self._add(update)
        for name, (index, _) in update.sparse.items():
            self._sent_mask(name, index.device)[index] = True
        for name, tensor in update.dense.items():
            if name in self._sent or len(self.shapes[name]) > 0:
                self._sent_mask(name, tensor.device).fill_(True)
        self.num_updates += 1

    def _sent_mask(self, name: str, device: torch.device) -> torch.Tensor:
        if name not in self._sent:
            self._sent[name] = torch.zeros(_row_shape(self.shapes[name]), dtype=torch.bool, device=device)
        return self._sent[name]

    def result(self) -> dict[str, torch.Tensor]:
        """The round's global update (full shape per parameter); then start a new round.

        A round in which nobody reported leaves the model unchanged (all zeros).
        """
        if self.num_updates == 0:
            out = {name: torch.zeros(shape, device=self.device) for name, shape in self.shapes.items()}
        else:
            out = self._result()
        self.sent_rows, self._sent = self._sent, {}
        self._reset()
        self.num_updates = 0
        return out

    @abstractmethod
    def _add(self, update: ClientUpdate) -> None: ...

    @abstractmethod
    def _result(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def _reset(self) -> None: ...


class _WeightedMean:
    """The FedAvg rule as running sums: per row, sum of ``w*delta`` and sum of ``w`` over senders."""

    def __init__(self, shapes: Mapping[str, torch.Size]) -> None:
        self.shapes = shapes
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}

    def _buffers(self, name: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.sums:
            shape = self.shapes[name]
            self.sums[name] = torch.zeros(shape, dtype=like.dtype, device=like.device)
            self.weights[name] = torch.zeros(_row_shape(shape), dtype=torch.float64, device=like.device)
        return self.sums[name], self.weights[name]

    def add(self, update: ClientUpdate) -> None:
        weight = float(update.weight)
        for name, delta in update.dense.items():
            sums, weights = self._buffers(name, delta)
            sums.add_(delta, alpha=weight)
            weights.add_(weight)
        for name, (index, rows) in update.sparse.items():
            sums, weights = self._buffers(name, rows)
            sums.index_add_(0, index, rows, alpha=weight)
            weights.index_add_(0, index, torch.full(index.shape, weight, dtype=weights.dtype, device=weights.device))

    def result(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, shape in self.shapes.items():
            if name not in self.sums:
                out[name] = torch.zeros(shape, device=_device_of(self.sums.values()))
                continue
            sums, weights = self.sums[name], self.weights[name]
            safe = torch.where(weights > 0, weights, torch.ones_like(weights)).to(sums.dtype)
            mean = sums / _broadcast(safe, shape)
            out[name] = torch.where(_broadcast(weights > 0, shape), mean, torch.zeros_like(mean))
        return out

    def reset(self) -> None:
        self.sums.clear()
        self.weights.clear()


class FedAvg(Aggregator):
    """Weighted mean of client deltas (McMahan et al., 2017); streaming, O(model) memory.

    Weights are ``update.weight`` (training positions). Dense parameters: the plain
    weighted mean over all clients that sent them. Sparse tables are averaged *per
    row over the clients that sent that row*:
    ``agg[r] = sum_{c sent r} w_c * delta_c[r] / sum_{c sent r} w_c``, and a row
    nobody sent stays 0. Why: a client that never saw an item has no evidence about
    its embedding; counting it as a zero delta would shrink rare items' updates
    towards 0 in proportion to how rare they are. A dense upload (e.g. after local
    DP) counts as sending every row. Sparse row indices are assumed unique within
    one update.
    """

    name = "fedavg"

    def __init__(self, shapes: Mapping[str, torch.Size], **options: Any) -> None:
        super().__init__(shapes, **options)
        self._mean = _WeightedMean(self.shapes)

    def _add(self, update: ClientUpdate) -> None:
        self._mean.add(update)

    def _result(self) -> dict[str, torch.Tensor]:
        return self._mean.result()

    def _reset(self) -> None:
        self._mean.reset()


class FedProx(FedAvg):
    """FedProx (Li et al., 2020): the server step is FedAvg's; ``mu`` is for the clients.

    The proximal term ``mu/2 * ||w - w_global||^2`` is added to each client's local
    loss; this class only carries ``mu`` so the engine can read it from the
    aggregator that the config names.
    """

    name = "fedprox"
    options: ClassVar[dict[str, Any]] = {"mu": 0.01}

    def __init__(self, shapes: Mapping[str, torch.Size], mu: float = 0.01, **options: Any) -> None:
        super().__init__(shapes, **options)
        self.mu = _number(self.name, "mu", mu)
        if self.mu < 0:
            raise ConfigurationError(
                f"The fedprox proximal weight mu must be >= 0, got {mu!r}. Use a small value such "
                "as 0.01 (0 makes fedprox identical to fedavg)."
            )


class _Buffered(Aggregator):
    """Base of aggregators that need every update at once: keeps them in a list (O(n x model))."""

    def __init__(self, shapes: Mapping[str, torch.Size], **options: Any) -> None:
        super().__init__(shapes, **options)
        self.updates: list[ClientUpdate] = []

    def _add(self, update: ClientUpdate) -> None:
        self.updates.append(update)

    def _reset(self) -> None:
        self.updates = []

    def _stacked(self, name: str) -> torch.Tensor | None:
        """``[n, *shape]`` of the clients' values, NaN where a client did not send; None if nobody did."""
        shape = self.shapes[name]
        stack: torch.Tensor | None = None
        for i, update in enumerate(self.updates):
            if name in update.dense:
                value = update.dense[name]
            elif name in update.sparse:
                value = update.sparse[name][1]
            else:
                continue
            if stack is None:
                stack = torch.full((len(self.updates), *shape), math.nan, dtype=value.dtype, device=value.device)
            if name in update.dense:
                stack[i] = value
            else:
                stack[i][update.sparse[name][0]] = value
        return stack


class _Coordinatewise(_Buffered):
    """Base of aggregators that combine each coordinate over the clients that sent it."""

    def _combine(self, stack: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """``stack`` is ``[n, *shape]`` with NaN where a client did not send."""
        raise NotImplementedError

    def _result(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, shape in self.shapes.items():
            stack = self._stacked(name)
            out[name] = torch.zeros(shape, device=self.device) if stack is None else self._combine(stack, shape)
        return out


class CoordinateMedian(_Coordinatewise):
    """Coordinate-wise median over the clients that sent each coordinate (Yin et al., 2018).

    Unsent coordinates are NaN and skipped (``torch.nanmedian``); a coordinate nobody
    sent is 0. With an even number of senders this is the *lower* median (the smaller
    of the two middle values), not their average -- it is always a value some client
    actually sent. NaN values a client sends are treated as not sent.
    """

    name = "median"

    def _combine(self, stack: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        median = torch.nanmedian(stack, dim=0).values
        return torch.where(torch.isnan(median), torch.zeros_like(median), median)


class TrimmedMean(_Coordinatewise):
    """Coordinate-wise trimmed mean (Yin et al., 2018) over the clients that sent each coordinate.

    Per coordinate with ``k`` senders, the ``floor(trim_ratio * k)`` smallest and
    largest values are dropped and the rest averaged; a coordinate nobody sent is 0.
    ``trim_ratio < 0.5`` guarantees at least one value is kept.
    """

    name = "trimmed_mean"
    options: ClassVar[dict[str, Any]] = {"trim_ratio": 0.1}

    def __init__(self, shapes: Mapping[str, torch.Size], trim_ratio: float = 0.1, **options: Any) -> None:
        super().__init__(shapes, **options)
        self.trim_ratio = _number(self.name, "trim_ratio", trim_ratio)
        if not 0 <= self.trim_ratio < 0.5:
            raise ConfigurationError(
                f"The trimmed_mean aggregator needs 0 <= trim_ratio < 0.5, got {trim_ratio!r}: it drops "
                "that fraction of values at *each* end, so 0.5 or more would drop everything. "
                "A typical value is 0.1 (or the expected fraction of malicious clients)."
            )

    def _combine(self, stack: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        senders = (~torch.isnan(stack)).sum(dim=0)
        # A tiny epsilon so that e.g. 0.29 * 100 trims 29, not 28 (float rounding).
        trim = torch.floor(senders.double() * self.trim_ratio + 1e-9).long()
        ordered = torch.sort(stack, dim=0).values  # NaN (unsent) sort last
        position = torch.arange(stack.shape[0], device=stack.device).reshape(-1, *([1] * len(shape)))
        keep = (position >= trim) & (position < senders - trim)
        kept = (senders - 2 * trim).clamp(min=1).to(stack.dtype)
        mean = torch.where(keep, ordered, torch.zeros_like(ordered)).sum(dim=0) / kept
        return torch.where(senders > 0, mean, torch.zeros_like(mean))


class Krum(_Buffered):
    """Krum (Blanchard et al., 2017): the single update closest to its neighbours.

    With ``n`` clients of which at most ``f = num_malicious`` are Byzantine, client
    ``i``'s score is the sum of squared L2 distances to its ``n - f - 2`` nearest other
    clients, on full dense updates (unsent rows are 0). The lowest score wins (ties:
    the earlier client). Needs ``n > 2f + 2``. Weights are ignored.
    """

    name = "krum"
    options: ClassVar[dict[str, Any]] = {"num_malicious": 0}

    def __init__(self, shapes: Mapping[str, torch.Size], num_malicious: int = 0, **options: Any) -> None:
        super().__init__(shapes, **options)
        self.num_malicious = _number(self.name, "num_malicious", num_malicious, int)
        if self.num_malicious < 0:
            raise ConfigurationError(
                f"The {self.name} aggregator needs num_malicious >= 0 (the number of Byzantine clients "
                f"it must tolerate per round), got {num_malicious!r}."
            )

    def check_num_clients(self, n: int) -> None:
        """Raise if ``n`` clients per round are too few to tolerate ``num_malicious``."""
        f = self.num_malicious
        if n <= 2 * f + 2:
            raise ConfigurationError(
                f"The {self.name} aggregator with num_malicious={f} needs more than 2*num_malicious+2 = "
                f"{2 * f + 2} clients per round (n > 2f + 2), but a round has {n}. Sample more clients "
                "per round, lower num_malicious, or use median or trimmed_mean."
            )

    def _scores(self) -> torch.Tensor:
        """Krum score per client (lower is better); non-finite scores rank last."""
        n = len(self.updates)
        self.check_num_clients(n)
        flat = torch.stack(
            [torch.cat([t.reshape(-1).double() for t in _dense_full(u, self.shapes).values()]) for u in self.updates]
        )
        distances = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist").square()
        distances.fill_diagonal_(math.inf)
        nearest = torch.sort(distances, dim=1).values[:, : n - self.num_malicious - 2]
        return torch.nan_to_num(nearest.sum(dim=1), nan=math.inf)

    def _result(self) -> dict[str, torch.Tensor]:
        best = int(torch.argmin(self._scores()))
        return _dense_full(self.updates[best], self.shapes)


class MultiKrum(Krum):
    """Multi-Krum (El Mhamdi et al., 2018): FedAvg (with weights, per-row rule) of the ``m`` best Krum scores.

    ``multi_krum_m`` defaults to ``n - f``; it must satisfy ``1 <= m <= n - f``: choosing
    more than the ``n - f`` honest clients would admit a suspect by construction.
    """

    name = "multi_krum"
    options: ClassVar[dict[str, Any]] = {"num_malicious": 0, "multi_krum_m": None}

    def __init__(
        self,
        shapes: Mapping[str, torch.Size],
        num_malicious: int = 0,
        multi_krum_m: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(shapes, num_malicious=num_malicious, **options)
        self.multi_krum_m = None if multi_krum_m is None else _number(self.name, "multi_krum_m", multi_krum_m, int)
        if self.multi_krum_m is not None and self.multi_krum_m < 1:
            raise ConfigurationError(
                f"The multi_krum aggregator needs multi_krum_m >= 1 (how many best-scored clients to "
                f"average), got {multi_krum_m!r}. Leave it unset to use n - num_malicious."
            )

    def check_num_clients(self, n: int) -> None:
        super().check_num_clients(n)
        m = self.multi_krum_m
        if m is not None and m > n - self.num_malicious:
            raise ConfigurationError(
                f"The multi_krum aggregator averages multi_krum_m={m} clients, but with {n} clients per round "
                f"and num_malicious={self.num_malicious} at most n - num_malicious = {n - self.num_malicious} "
                "can be chosen without admitting a suspect. Lower multi_krum_m or leave it unset."
            )

    def _result(self) -> dict[str, torch.Tensor]:
        scores = self._scores()
        m = self.multi_krum_m if self.multi_krum_m is not None else len(self.updates) - self.num_malicious
        # Stable sort: ties go to the earlier client, as in Krum.
        chosen = torch.sort(scores, stable=True).indices[:m].tolist()
        mean = _WeightedMean(self.shapes)
        for i in sorted(chosen):
            mean.add(self.updates[i])
        return mean.result()


class NormBound(FedAvg):
    """Norm bounding (Sun et al., 2019): clip each update's global L2 norm, then FedAvg.

    Each update is scaled by ``min(1, max_update_norm / ||update||)`` (one shared
    implementation, :func:`recbole_lumos.federated.privacy.clip_update`), which caps
    how far any one client can pull the model. Streaming, O(model) memory.
    """

    name = "norm_bound"
    options: ClassVar[dict[str, Any]] = {"max_update_norm": REQUIRED}

    def __init__(self, shapes: Mapping[str, torch.Size], max_update_norm: float, **options: Any) -> None:
        super().__init__(shapes, **options)
        self.max_update_norm = _number(self.name, "max_update_norm", max_update_norm)
        if self.max_update_norm <= 0:
            raise ConfigurationError(
                f"The norm_bound aggregator needs max_update_norm > 0, got {max_update_norm!r}. Set it "
                "to the largest L2 norm of an honest client's update, for example 1.0."
            )

    def _add(self, update: ClientUpdate) -> None:
        super()._add(clip_update(update, self.max_update_norm))


AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (FedAvg, FedProx, CoordinateMedian, TrimmedMean, Krum, MultiKrum, NormBound)
}
"""Aggregator name (the ``aggregator`` config value) -> class."""


def build_aggregator(
    name: str,
    shapes: Mapping[str, torch.Size],
    config: Mapping[str, Any],
    num_clients: int | None = None,
) -> Aggregator:
    """The aggregator called ``name``, with its options read from a RecBole-like ``config``.

    Only ``key in config`` and ``config[key]`` are used (RecBole's Config has no
    ``.get``); a key set to None counts as unset. If ``num_clients`` (clients per
    round) is given, Krum's client-count condition is checked now rather than at
    the end of the first round.
    """
    key = str(name).strip().lower()
    if key not in AGGREGATORS:
        raise ConfigurationError(
            f"Unknown aggregator {name!r}. Valid aggregators are: {', '.join(AGGREGATORS)}. "
            "Set aggregator to one of them in your config file or with --aggregator=NAME."
        )
    cls = AGGREGATORS[key]
    kwargs: dict[str, Any] = {}
    for option, default in cls.options.items():
        value = _config_value(config, option, default)
        if value is REQUIRED:
            raise ConfigurationError(
                f"The {key} aggregator needs the config key {option}, which is not set. "
                f"Add {option}: VALUE to your config file or pass --{option}=VALUE."
            )
        kwargs[option] = value
    aggregator = cls(shapes, **kwargs)
    if num_clients is not None and isinstance(aggregator, Krum):
        aggregator.check_num_clients(num_clients)
    return aggregator
