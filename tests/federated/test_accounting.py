"""Privacy accounting: epsilon from Opacus's RDP accountant against a hand computation, and a run's budget."""

import math

import numpy as np
import pytest
from conftest import TINY_ENGINE

from recbole_lumos.errors import ConfigurationError
from recbole_lumos.federated.accounting import check_delta, gaussian_epsilon, privacy_budget
from recbole_lumos.quick_start import run_model


def hand_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """The Gaussian mechanism composed ``rounds`` times, by hand.

    RDP of one Gaussian mechanism of noise multiplier z at order a: a / (2 z^2) (Mironov 2017,
    Prop. 7); composition adds it up. To (epsilon, delta) (Balle et al. 2020, Thm. 21):
    eps(a) = rdp(a) + log((a - 1) / a) - (log(delta) + log(a)) / (a - 1), minimised over the
    orders 1.1, 1.2, ..., 10.9, 12, 13, ..., 63.
    """
    orders = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))
    return min(
        rounds * a / (2 * noise_multiplier**2) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        for a in orders
    )


def test_epsilon_matches_a_hand_computation():
    # z = 1, 3 rounds, delta 1e-5: the minimum is at order 3.5,
    # 5.25 + log(2.5 / 3.5) - (log(1e-5) + log(3.5)) / 2.5 = 9.0099
    assert hand_epsilon(1.0, 3, 1e-5) == pytest.approx(9.0099, abs=1e-4)
    assert gaussian_epsilon(1.0, 3, 1e-5) == pytest.approx(9.0099, abs=1e-4)
    for z, rounds, delta in [(2.0, 10, 1e-5), (0.8, 1, 1e-3), (5.0, 200, 1e-6)]:
        assert gaussian_epsilon(z, rounds, delta) == pytest.approx(hand_epsilon(z, rounds, delta), rel=1e-9)
    # The classic conversion (eps = rdp + log(1/delta) / (a - 1)) is looser, never tighter.
    classic = min(3 * a / 2 + math.log(1e5) / (a - 1) for a in np.arange(1.1, 64, 0.01))
    assert gaussian_epsilon(1.0, 3, 1e-5) < classic


def test_edge_cases_and_amplification():
    assert gaussian_epsilon(1.0, 0, 1e-5) == 0.0
    assert gaussian_epsilon(0.0, 3, 1e-5) == math.inf
    full = gaussian_epsilon(1.0, 50, 1e-5)
    assert gaussian_epsilon(1.0, 50, 1e-5, sample_rate=0.1) < full
    assert gaussian_epsilon(1.0, 50, 1e-5, sample_rate=1.0) == pytest.approx(full)
    budget = privacy_budget(1.0, 0.5, [0, 3, 1, 2], rounds=5, sample_rate=0.5, delta=1e-5)
    assert budget.client_rounds_max == 3 and budget.epsilon == pytest.approx(hand_epsilon(1.0, 3, 1e-5))
    assert budget.epsilon_amplified == pytest.approx(gaussian_epsilon(1.0, 5, 1e-5, 0.5))
    assert check_delta(None) == 1e-5
    with pytest.raises(ConfigurationError, match="ldp_delta"):
        check_delta(1.5)


def test_a_local_dp_run_reports_the_epsilon_of_the_client_that_took_part_most(tiny_data, tmp_path):
    from recbole_lumos.data.partition import RoundSampler

    result = run_model(
        "FedSASRec",
        "tiny",
        overrides={
            **TINY_ENGINE,
            "data_path": str(tiny_data),
            "epochs": 4,
            "client_fraction": 0.25,
            "client_batch": 8,
            "num_negatives": 8,
            "ldp_clip": 1.0,
            "ldp_noise_multiplier": 1.5,
            "ldp_delta": 1e-4,
            "seed": 2,  # no client takes part in all 4 rounds with this seed
        },
    )
    privacy = result.privacy
    sampler = RoundSampler(40, clients_per_round=10, client_batch=8, seed=2)
    counts = np.zeros(40, dtype=int)
    for round_index in range(4):
        counts[sampler.round_clients(round_index)] += 1
    assert privacy["rounds"] == 4 and privacy["client_rounds_max"] == counts.max() < 4
    assert privacy["delta"] == 1e-4 and privacy["sample_rate"] == 0.25
    assert privacy["epsilon"] == pytest.approx(hand_epsilon(1.5, int(counts.max()), 1e-4))
    assert privacy["epsilon_amplified"] < gaussian_epsilon(1.5, 4, 1e-4)
    plain = run_model("FedSASRec", "tiny", overrides={**TINY_ENGINE, "data_path": str(tiny_data), "epochs": 1})
    assert plain.privacy is None


def test_the_noise_for_a_target_epsilon_spends_it_and_no_more():
    from recbole_lumos.federated.accounting import gaussian_epsilon, noise_multiplier_for

    z = noise_multiplier_for(8.0, steps=100, delta=1e-5)
    assert 7.9 <= gaussian_epsilon(z, 100, 1e-5) <= 8.0
    assert gaussian_epsilon(z * 0.9, 100, 1e-5) > 8.0  # less noise would overspend
    assert noise_multiplier_for(8.0, steps=100, delta=1e-5, sample_rate=0.1) < z  # subsampling amplifies
