"""Bytes on the wire, counted from the real tensors sent down and up."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the tensors' payloads (``numel * element_size``)."""
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class RoundTraffic:
    """One round's traffic: per-client uploads and the broadcast of the global backbone."""

    down_per_client: int = 0
    up: list[int] = field(default_factory=list)

    @property
    def clients(self) -> int:
        return len(self.up)

    @property
    def up_total(self) -> int:
        return sum(self.up)

    @property
    def down_total(self) -> int:
        return self.down_per_client * self.clients

    def summary(self) -> dict[str, float]:
        n = max(self.clients, 1)
        return {
            "bytes_up_per_client": self.up_total / n,
            "bytes_down_per_client": float(self.down_per_client),
            "bytes_up_round": float(self.up_total),
            "bytes_down_round": float(self.down_total),
        }
