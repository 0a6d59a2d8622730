"""What a client sends up after local training: parameter deltas, never data.

An update holds, for every backbone parameter, ``local - global`` after the
client's local epochs. Item-embedding-like tables can be sent *sparsely*: only the
rows the client touched (its own items and its sampled negatives), as row indices
plus row deltas. Everything else is sent dense. ``weight`` is the client's number of
training positions (the FedAvg weight).

A sparse table stays sparse on the wire even when a client touched nearly every row:
the aggregators average a row over the clients that *sent* it, so turning a sparse
table into a dense one would make the client a sender of every row (zeros included)
and change the aggregate. Rows are sent with their indices (8 bytes a row on top of
``4 d``), the only encoding that keeps that meaning.

Note on privacy: the row indices of a sparse upload reveal a superset of the items
the client touched. Local differential privacy (:mod:`recbole_lumos.federated.privacy`)
therefore always uploads densely.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

SPARSE_TABLES = ("item_embedding.weight",)
"""Parameters uploaded as touched rows only, when the local loss allows it."""


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

    def to_dense(self, shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
        """Every parameter as a full tensor; rows a sparse table did not send are zero."""
        out = dict(self.dense)
        for name, (index, rows) in self.sparse.items():
            full = torch.zeros(shapes[name], dtype=rows.dtype, device=rows.device)
            full[index] = rows
            out[name] = full
        return out

    def touched(self, shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
        """Boolean mask per parameter: which coordinates this client actually sent."""
        out = {name: torch.ones(t.shape, dtype=torch.bool, device=t.device) for name, t in self.dense.items()}
        for name, (index, _) in self.sparse.items():
            mask = torch.zeros(shapes[name], dtype=torch.bool, device=index.device)
            mask[index] = True
            out[name] = mask
        return out
