"""What a client sends up after local training: parameter deltas, never data.

An update holds, for every backbone parameter, ``local - global`` after the
client's local epochs. Item-embedding-like tables can be sent *sparsely*: only the
rows the client touched (its own items and its sampled negatives), as row indices
plus row deltas. Everything else is sent dense. ``weight`` is the client's number of
training positions (the FedAvg weight).

Note on privacy: the row indices of a sparse upload reveal a superset of the items
the client touched. Local differential privacy (:mod:`recbole_lumos.federated.privacy`)
therefore always uploads densely.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class ClientUpdate:
    """One client's upload for one round."""

    dense: dict[str, torch.Tensor]
    """Parameter name -> delta with the parameter's full shape."""
    sparse: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Parameter name -> (row indices ``[k]`` int64, row deltas ``[k, d]``)."""
    weight: float = 1.0
    """Number of training positions behind this update (FedAvg weight)."""

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor that crosses the network, for byte accounting and audits."""
        yield from self.dense.values()
        for index, rows in self.sparse.values():
            yield index
            yield rows

    def num_bytes(self) -> int:
        """Bytes on the wire: the real tensors' sizes (indices included)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def compact(self, shapes: Mapping[str, torch.Size]) -> ClientUpdate:
        """The same update in its smaller encoding: a sparse table that would cost more
        bytes than the dense tensor (a client that touched most rows) is sent dense."""
        sparse, dense = {}, dict(self.dense)
        for name, (index, rows) in self.sparse.items():
            dense_bytes = torch.Size(shapes[name]).numel() * rows.element_size()
            if index.numel() * index.element_size() + rows.numel() * rows.element_size() >= dense_bytes:
                full = torch.zeros(shapes[name], dtype=rows.dtype)
                full[index] = rows
                dense[name] = full
            else:
                sparse[name] = (index, rows)
        return ClientUpdate(dense=dense, sparse=sparse, weight=self.weight)

    def to_dense(self, shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
        """Every parameter as a full tensor; rows a sparse table did not send are zero."""
        out = dict(self.dense)
        for name, (index, rows) in self.sparse.items():
            full = torch.zeros(shapes[name], dtype=rows.dtype)
            full[index] = rows
            out[name] = full
        return out

    def touched(self, shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
        """Boolean mask per parameter: which coordinates this client actually sent."""
        out = {name: torch.ones(t.shape, dtype=torch.bool) for name, t in self.dense.items()}
        for name, (index, _) in self.sparse.items():
            mask = torch.zeros(shapes[name], dtype=torch.bool)
            mask[index] = True
            out[name] = mask
        return out
