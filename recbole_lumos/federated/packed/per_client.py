"""Per-client sums over a chunk's tokens: the gradients that one backward pass holds mixed.

One backward pass over the packed cohort holds every client's gradient, mixed only in
the weight gradients, which are therefore never formed. Instead (as Opacus does for
per-sample gradients) autograd returns the gradient at the output of every linear and
layer-norm layer, and a client's weight gradient is the sum over its tokens of
``grad_out^T input``: one matrix product per client. The forward pass records each
layer's call (:class:`_Linear`, :class:`_Norm`); :class:`_Segments` knows which client
owns each token and forms those sums; :class:`_Accumulator` holds the per-client
gradients, dense, and sparse item-table rows (from the input lookups, the targets and
the negatives).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from recbole_lumos.federated import packed


class _Segments:
    """Which client each token belongs to, for per-client sums over a chunk's tokens.

    ``owner`` (sorted) is per token. With ``window_owner`` set, the tokens are whole
    windows (``[W, L']`` flattened) and ``window_owner[w]`` owns window ``w``.
    """

    def __init__(self, owner: torch.Tensor, window_owner: torch.Tensor | None = None) -> None:
        clients, counts = torch.unique_consecutive(owner, return_counts=True)
        self.owner = owner
        self.window_owner = window_owner
        self.clients = clients
        self._client_list, self.counts = torch.stack([clients, counts]).tolist()  # one host read
        self.bounds = [0, *itertools.accumulate(self.counts)]
        self.loop = len(self.counts) <= packed._LOOP_SEGMENTS or owner.numel() >= packed._LOOP_TOKENS * len(self.counts)
        self._padded = None

    def _runs(self):
        return zip(self._client_list, self.bounds[:-1], self.bounds[1:], strict=True)

    def outer(self, grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out[c] += grad_c^T x_c`` for every client ``c`` (rows of ``grad``/``x`` are tokens)."""
        if self.loop:  # few clients: one matmul each
            for c, start, end in self._runs():
                out[c].addmm_(grad[start:end].T, x[start:end])
            return
        if self.window_owner is not None:  # many clients: one matmul per window
            windows = self.window_owner.numel()
            per_window = torch.bmm(
                grad.view(windows, -1, grad.size(-1)).transpose(1, 2), x.view(windows, -1, x.size(-1))
            )
            out.index_add_(0, self.window_owner, per_window)
            return
        if self._padded is None:  # many clients, ragged tokens: pad each client's tokens
            device = self.owner.device
            counts = torch.tensor(self.counts, device=device)
            segment = torch.repeat_interleave(torch.arange(len(self.counts), device=device), counts)
            slot = (
                torch.arange(self.owner.numel(), device=device) - torch.tensor(self.bounds[:-1], device=device)[segment]
            )
            self._padded = (segment, slot, max(self.counts))
        segment, slot, longest = self._padded

        def pad(t):
            padded = t.new_zeros(len(self.counts), longest, t.size(-1))
            padded[segment, slot] = t
            return padded

        every = torch.arange(out.size(0), device=self.clients.device)
        if self.clients.numel() == out.size(0) and torch.equal(self.clients, every):
            # every client of ``out`` is here, in order: accumulate in place (with a full-softmax
            # item table this saves a [clients, items, d] temporary and a pass over it)
            out.baddbmm_(pad(grad).transpose(1, 2), pad(x))
            return
        out.index_add_(0, self.clients, torch.bmm(pad(grad).transpose(1, 2), pad(x)))

    def sum(self, value: torch.Tensor, out: torch.Tensor) -> None:
        """``out[c] += sum of value over c's tokens``."""
        if self.window_owner is not None:
            windows = self.window_owner.numel()
            out.index_add_(0, self.window_owner, value.view(windows, -1, *value.shape[1:]).sum(1))
        else:
            out.index_add_(0, self.owner, value)


class _Accumulator:
    """Per-client dense gradients and sparse ``(client * rows + row, gradient)`` entries."""

    def __init__(self, params: Mapping[str, torch.Tensor], num_clients: int) -> None:
        self.params = params
        self.num_clients = num_clients
        self.dense: dict[str, torch.Tensor] = {}
        self.entries: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def get(self, name: str, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self.dense:
            self.dense[name] = like.new_zeros(self.num_clients, *shape)
        return self.dense[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.get(name, self.params[name], self.params[name].shape)

    def rows(self, name: str, clients: torch.Tensor, ids: torch.Tensor, values: torch.Tensor | None) -> None:
        """Row ``ids[i]`` of client ``clients[i]`` gets ``values[i]`` (zeros if ``None``: touched only)."""
        keys = (clients * self.params[name].size(0) + ids).flatten()
        if values is None:
            values = self.params[name].new_zeros(keys.numel(), self.params[name].size(1))
        self.entries.setdefault(name, []).append((keys, values.reshape(keys.numel(), self.params[name].size(1))))


class _Linear:
    """A linear layer's call: per-client weight gradients from its input and output gradient."""

    def __init__(self, name: str, x: torch.Tensor, out: torch.Tensor, segments: _Segments) -> None:
        self.name, self.x, self.out, self.segments = name, x, out, segments

    def accumulate(self, grad: torch.Tensor, acc: _Accumulator) -> None:
        features = (grad.size(-1), self.x.size(-1))
        self.segments.outer(grad, self.x, acc.get(f"{self.name}.weight", grad, features))
        self.segments.sum(grad, acc.get(f"{self.name}.bias", grad, features[:1]))


class _Norm:
    """A layer norm's call: per-client weight gradients from its input and output gradient."""

    def __init__(self, name: str, module: nn.LayerNorm, x: torch.Tensor, out: torch.Tensor, segments) -> None:
        self.name, self.module, self.x, self.out, self.segments = name, module, x, out, segments

    def accumulate(self, grad: torch.Tensor, acc: _Accumulator) -> None:
        normalised = F.layer_norm(self.x, self.module.normalized_shape, None, None, self.module.eps)
        self.segments.sum(grad * normalised, acc[f"{self.name}.weight"])
        self.segments.sum(grad, acc[f"{self.name}.bias"])
