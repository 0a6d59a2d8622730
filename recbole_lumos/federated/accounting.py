"""What a run spends: bytes on the wire (counted from the real tensors sent down and up) and,
with local DP, privacy ((epsilon, delta) from Opacus's RDP accountant).

Privacy. With ``ldp_clip`` C and ``ldp_noise_multiplier`` z, a client that takes part
in a round releases its update clipped to norm C plus ``N(0, (z C)^2)`` noise: one
Gaussian mechanism of noise multiplier z. The unit of privacy is a client (all of
its data; add/remove adjacency, L2 sensitivity C, the convention of DP-FedAvg and of
Opacus; for replace-one adjacency the sensitivity is 2C: read the figures for z / 2).
Two figures, for two observers:

* ``epsilon``: against the server, which sees every upload and who sent it. The
  mechanism composes over the rounds the client actually took part in, with no
  amplification; reported for the client that took part most often.
* ``epsilon_amplified``: against a party that sees only the global models, for whom
  a client's participation is secret. Every round is then the Gaussian mechanism
  subsampled at the client sampling rate q (clients per round / clients), composed
  over all rounds. Opacus analyses Poisson sampling; the engine samples a fixed
  number of clients per round, so this figure is the usual approximation. It counts
  the client's own noise only (the other clients' noise only adds privacy).

``delta`` is ``ldp_delta`` (default 1e-5).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from recbole_lumos.errors import ConfigurationError


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


def gaussian_epsilon(noise_multiplier: float, steps: int, delta: float, sample_rate: float = 1.0) -> float:
    """Epsilon of ``steps`` Gaussian mechanisms of ``noise_multiplier`` (subsampled at ``sample_rate``),
    composed by Opacus's RDP accountant, at ``delta``. 0 for no step, infinite without noise."""
    if steps <= 0 or sample_rate <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=min(1.0, sample_rate))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the (smallest|largest) alpha.*")
        return float(accountant.get_epsilon(delta))


def noise_multiplier_for(target_epsilon: float, steps: int, delta: float, sample_rate: float = 1.0) -> float:
    """The smallest ``ldp_noise_multiplier`` whose ``steps`` mechanisms stay within ``target_epsilon`` at
    ``delta`` (Opacus's ``get_noise_multiplier``, RDP): to set a run's noise from the budget it may spend.
    ``steps`` is the rounds a client takes part in (``epsilon``) or every round with ``sample_rate``
    (``epsilon_amplified``)."""
    if target_epsilon <= 0 or steps <= 0:
        raise ConfigurationError(f"need a positive epsilon and number of rounds, got {target_epsilon} and {steps}.")
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the (smallest|largest) alpha.*")
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=min(1.0, sample_rate),
                steps=steps,
                accountant="rdp",
                epsilon_tolerance=0.01,
            )
        )


@dataclass(frozen=True)
class PrivacyBudget:
    """A run's (epsilon, delta) under local DP (see the module docstring)."""

    epsilon: float
    delta: float
    epsilon_amplified: float
    noise_multiplier: float
    clip: float
    rounds: int
    """Rounds the run took."""
    client_rounds_max: int
    """Rounds taken part in by the client that took part most often."""
    sample_rate: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_delta(delta: Any) -> float:
    """``ldp_delta`` (None: 1e-5), checked to lie in (0, 1)."""
    value = 1e-5 if delta is None else float(delta)
    if not 0.0 < value < 1.0:
        raise ConfigurationError(f"ldp_delta must lie in (0, 1), got {delta!r}; e.g. --ldp_delta=1e-5.")
    return value


def privacy_budget(
    noise_multiplier: float,
    clip: float,
    participation: Sequence[int],
    rounds: int,
    sample_rate: float,
    delta: float,
) -> PrivacyBudget:
    """The budget of a run whose clients took part in ``participation[i]`` rounds each, out of ``rounds``."""
    worst = max(participation, default=0)
    return PrivacyBudget(
        epsilon=gaussian_epsilon(noise_multiplier, worst, delta),
        delta=delta,
        epsilon_amplified=gaussian_epsilon(noise_multiplier, rounds, delta, sample_rate),
        noise_multiplier=noise_multiplier,
        clip=clip,
        rounds=rounds,
        client_rounds_max=worst,
        sample_rate=sample_rate,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m recbole_lumos.federated.accounting --epsilon 8 --rounds 200``: the noise multiplier."""
    import argparse

    parser = argparse.ArgumentParser(description="The ldp_noise_multiplier that spends a given epsilon.")
    parser.add_argument("--epsilon", type=float, required=True)
    parser.add_argument("--rounds", type=int, required=True, help="rounds a client takes part in")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--sample_rate", type=float, default=1.0, help="per-round sampling rate (amplified epsilon)")
    args = parser.parse_args(argv)
    z = noise_multiplier_for(args.epsilon, args.rounds, args.delta, args.sample_rate)
    spent = gaussian_epsilon(z, args.rounds, args.delta, args.sample_rate)
    print(f"ldp_noise_multiplier {z:.4f}: epsilon {spent:.3f} at delta {args.delta:g} over {args.rounds} rounds")


if __name__ == "__main__":
    main()
