"""Server aggregators on tiny hand-computed rounds: a dense bias [2] and a sparse item table [4, 2]."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.aggregators import (
    AGGREGATORS,
    Aggregator,
    FedAvg,
    FedProx,
    Krum,
    MultiKrum,
    build_aggregator,
)
from recbole_lumos.federated.update import ClientUpdate

SHAPES = {"bias": torch.Size([2]), "item": torch.Size([4, 2])}


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Cheap stand-in for torch.testing.assert_close, whose first call costs ~0.7 s of imports."""
    assert actual.shape == expected.shape and torch.allclose(actual, expected, atol=1e-6), (actual, expected)


def upd(
    bias: list[float] | None = None, rows: dict[int, list[float]] | None = None, weight: float = 1.0
) -> ClientUpdate:
    """A client update: optional dense bias, optional sparse item rows {row: values}."""
    dense = {} if bias is None else {"bias": torch.tensor(bias, dtype=torch.float32)}
    sparse = {}
    if rows:
        sparse["item"] = (
            torch.tensor(list(rows), dtype=torch.long),
            torch.tensor(list(rows.values()), dtype=torch.float32),
        )
    return ClientUpdate(dense=dense, sparse=sparse, weight=weight)


def item(rows: dict[int, list[float]]) -> torch.Tensor:
    """The expected full item table: the given rows, zeros elsewhere."""
    out = torch.zeros(4, 2)
    for r, values in rows.items():
        out[r] = torch.tensor(values, dtype=torch.float32)
    return out


def run(aggregator: Aggregator, updates: list[ClientUpdate]) -> dict[str, torch.Tensor]:
    for u in updates:
        aggregator.add(u)
    return aggregator.result()


def assert_result(out: dict[str, torch.Tensor], bias: list[float], rows: dict[int, list[float]]) -> None:
    assert set(out) == set(SHAPES)
    assert_close(out["bias"], torch.tensor(bias, dtype=torch.float32))
    assert_close(out["item"], item(rows))


class RecBoleLikeConfig:
    """Supports only ``in`` and ``[]``, like RecBole's Config (no ``.get``)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]


# --- FedAvg -------------------------------------------------------------------------

A = upd([1, 2], {0: [1, 1], 1: [2, 2]}, weight=1)
B = upd([5, 6], {1: [6, 6], 2: [4, -4]}, weight=3)


def test_fedavg_weighted_dense_and_per_sender_sparse_rows() -> None:
    out = run(FedAvg(SHAPES), [A, B])
    # bias: (1*[1,2] + 3*[5,6]) / 4; row 0 only A; row 1 (1*2 + 3*6)/4; row 2 only B; row 3 nobody.
    assert_result(out, [4, 5], {0: [1, 1], 1: [5, 5], 2: [4, -4]})


def test_fedavg_is_streaming_order_free_and_resets() -> None:
    agg = FedAvg(SHAPES)
    agg.add(A)
    assert not any(isinstance(v, list) for v in vars(agg).values())  # no list of updates kept
    agg.add(B)
    first = agg.result()
    second = run(agg, [B, A])  # same aggregator after reset, reverse order
    for name in SHAPES:
        assert_close(first[name], second[name])
    # After result() the round starts empty: only A now.
    assert_result(run(agg, [A]), [1, 2], {0: [1, 1], 1: [2, 2]})
    assert_result(agg.result(), [0, 0], {})  # nobody reported: no change


def test_fedprox_server_step_is_fedavg_and_carries_mu() -> None:
    agg = FedProx(SHAPES, mu=0.5)
    assert agg.mu == 0.5
    assert_result(run(agg, [A, B]), [4, 5], {0: [1, 1], 1: [5, 5], 2: [4, -4]})
    with pytest.raises(ConfigurationError, match="mu"):
        FedProx(SHAPES, mu=-1)


def test_add_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        FedAvg(SHAPES).add(ClientUpdate(dense={"bias": torch.zeros(3)}))
    with pytest.raises(ValueError, match="not in the model"):
        FedAvg(SHAPES).add(ClientUpdate(dense={"other": torch.zeros(2)}))


# --- Median and trimmed mean ------------------------------------------------------------

ROBUST = [
    upd([1, 0], {0: [1, 1], 1: [2, 2]}),
    upd([2, 1], {0: [3, 3], 1: [4, 4]}),
    upd([3, 2], {0: [5, 5], 1: [9, 9]}),
    upd([100, -100], {0: [100, 100], 2: [7, 7]}, weight=1000),  # outlier, with an inflated weight
]


def test_median_suppresses_outlier_over_senders_only() -> None:
    out = run(build_aggregator("median", SHAPES, {}), ROBUST)
    # bias: [1,2,3,100] -> lower median 2; [-100,0,1,2] -> 0.
    # row 0: 4 senders [1,3,5,100] -> lower median 3; row 1: [2,4,9] -> 4; row 2: only the outlier 7; row 3: 0.
    assert_result(out, [2, 0], {0: [3, 3], 1: [4, 4], 2: [7, 7]})


def test_trimmed_mean_suppresses_outlier_over_senders_only() -> None:
    out = run(build_aggregator("trimmed_mean", SHAPES, {"trim_ratio": 0.25}), ROBUST)
    # k=4 trims 1 at each end: bias mean([2,3])=2.5, mean([0,1])=0.5; row 0 mean([3,5])=4.
    # row 1: k=3 trims floor(0.75)=0 -> mean([2,4,9])=5; row 2: k=1 -> 7; row 3: 0.
    assert_result(out, [2.5, 0.5], {0: [4, 4], 1: [5, 5], 2: [7, 7]})


def test_trimmed_mean_rejects_ratio_half_or_more() -> None:
    with pytest.raises(ConfigurationError, match="trim_ratio < 0.5"):
        build_aggregator("trimmed_mean", SHAPES, {"trim_ratio": 0.5})
    with pytest.raises(ConfigurationError, match="trim_ratio"):
        build_aggregator("trimmed_mean", SHAPES, {"trim_ratio": "a lot"})


# --- Krum and Multi-Krum -------------------------------------------------------------------

# Squared distances (item row 3 of the first client counts, 0.5^2 + 0.5^2 = 0.5):
# ab = 1.5, ac = 1.5, bc = 2, d is >= 180 from everyone. With n=4, f=0 each client
# sums its 2 nearest: a = 3, b = c = 3.5, d huge.
KRUM = [
    upd([1, 1], {3: [0.5, 0.5]}, weight=1),
    upd([2, 1], weight=1),
    upd([1, 2], weight=2),
    upd([11, 11], weight=100),
]


def test_krum_picks_client_closest_to_the_others() -> None:
    out = run(build_aggregator("krum", SHAPES, {"num_malicious": 0}), KRUM)
    assert_result(out, [1, 1], {3: [0.5, 0.5]})


def test_multi_krum_averages_m_best_with_fedavg_rule() -> None:
    out = run(build_aggregator("multi_krum", SHAPES, {"multi_krum_m": 3}), KRUM)
    # a, b, c with weights 1, 1, 2: bias (1*[1,1] + 1*[2,1] + 2*[1,2]) / 4; row 3 only a sent it.
    assert_result(out, [1.25, 1.5], {3: [0.5, 0.5]})


def test_krum_too_few_clients_raises() -> None:
    agg = Krum(SHAPES, num_malicious=1)
    for u in KRUM:
        agg.add(u)
    with pytest.raises(ConfigurationError, match=r"n > 2f \+ 2"):
        agg.result()
    with pytest.raises(ConfigurationError, match="more than 2\\*num_malicious\\+2 = 4"):
        build_aggregator("multi_krum", SHAPES, {"num_malicious": 1}, num_clients=4)
    with pytest.raises(ConfigurationError, match="multi_krum_m=5"):
        run(MultiKrum(SHAPES, num_malicious=1, multi_krum_m=5), KRUM + [upd([1, 1])])


# --- Norm bound ---------------------------------------------------------------------------


def test_norm_bound_clips_then_averages() -> None:
    big = upd([3, 0], {1: [0, 4]})  # global norm 5 -> scaled by 1/5
    small = upd([0.2, 0.2])  # norm ~0.28, untouched
    out = run(build_aggregator("norm_bound", SHAPES, {"max_update_norm": 1.0}), [big, small])
    assert_result(out, [0.4, 0.1], {1: [0, 0.8]})


def test_norm_bound_requires_max_update_norm() -> None:
    with pytest.raises(ConfigurationError, match="max_update_norm"):
        build_aggregator("norm_bound", SHAPES, {})
    with pytest.raises(ConfigurationError, match="max_update_norm > 0"):
        build_aggregator("norm_bound", SHAPES, {"max_update_norm": 0})


# --- build_aggregator -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_build_every_aggregator_from_recbole_like_config(name: str) -> None:
    config = RecBoleLikeConfig({"max_update_norm": 1.0, "mu": 0.1, "trim_ratio": None})
    agg = build_aggregator(name, SHAPES, config)
    assert type(agg) is AGGREGATORS[name]
    assert agg.name == name
    out = run(agg, [A, B, upd([0, 0])])  # three clients is enough for krum with f=0
    assert set(out) == set(SHAPES)
    assert out["item"].shape == SHAPES["item"]
    if isinstance(agg, FedProx):
        assert agg.mu == 0.1


def test_unknown_aggregator_lists_valid_names() -> None:
    with pytest.raises(ConfigurationError) as error:
        build_aggregator("fedsgd", SHAPES, {})
    message = str(error.value)
    assert "fedsgd" in message
    for name in AGGREGATORS:
        assert name in message
