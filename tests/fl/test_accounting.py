"""Oracle tests for fedmia.fl.accounting: the central-DP epsilon against the Gaussian mechanism's RDP
(Mironov 2017) converted by hand, against Opacus's RDP accountant, and the inverse."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fedmia.fl.accounting import central_epsilon, central_noise_for


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 5), (0.5, 10), (4.0, 3)])
def test_central_epsilon_is_the_composed_gaussian_mechanism(z: float, rounds: int) -> None:
    # RDP of T Gaussian releases at order a: T a / (2 z^2); to (eps, delta) with the conversion of
    # Balle et al. 2020 / Canonne et al. 2020: eps = rdp + log((a-1)/a) - (log delta + log a) / (a - 1)
    delta = 1e-5
    orders = np.linspace(1.01, 512, 200_000)
    eps = (
        rounds * orders / (2 * z * z)
        + np.log((orders - 1) / orders)
        - (math.log(delta) + np.log(orders)) / (orders - 1)
    )
    by_hand = float(eps.min())
    got = central_epsilon(z, rounds, num_clients=10, per_round=10, delta=delta)
    assert got == pytest.approx(by_hand, rel=0.02)
    assert got >= by_hand - 1e-9  # a finite grid of orders can only give a larger epsilon


def test_central_epsilon_agrees_with_opacus_at_sample_rate_1() -> None:
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = compute_rdp(q=1.0, noise_multiplier=1.5, steps=8, orders=orders)
    opacus_eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert central_epsilon(1.5, 8, 10, 10, 1e-5) == pytest.approx(opacus_eps, rel=0.02)


def test_sampling_metadata_does_not_amplify() -> None:
    # no amplification: sampling 2 of 10 clients costs what sampling all 10 costs
    assert central_epsilon(1.0, 5, 10, 2, 1e-5) == pytest.approx(central_epsilon(1.0, 5, 10, 10, 1e-5))


@pytest.mark.parametrize("eps", [1.0, 8.0, 32.0])
def test_central_noise_for_inverts_epsilon(eps: float) -> None:
    z = central_noise_for(eps, rounds=5, num_clients=10, per_round=10, delta=1e-5)
    assert central_epsilon(z, 5, 10, 10, 1e-5) == pytest.approx(eps, rel=1e-4)
    # more noise, less epsilon
    assert central_epsilon(z * 1.1, 5, 10, 10, 1e-5) < eps


def test_central_noise_for_rejects_nonpositive_epsilon() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        central_noise_for(0.0, 5, 10, 10, 1e-5)
