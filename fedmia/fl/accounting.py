"""The central-DP accountant fedmia's federations use (Flower's RDP accountant, client-level, no
amplification by client sampling; see ``fedmia.fl.strategy.build_strategy``), as a function of the noise
multiplier, and its inverse: the noise multiplier that spends a given epsilon.

Used to compare local and central DP at matched epsilon (``simulations/dp_central.yaml``): local DP's
noise is calibrated by Opacus from ``local_dp.target_epsilon``; central DP's by :func:`central_noise_for`.

Each round of DP-FedAvg with fixed clipping (McMahan et al., "Learning Differentially Private Recurrent
Language Models", ICLR 2018) is one Gaussian mechanism with noise multiplier z on the sum of the clipped
client updates; without sampling amplification its Rényi DP at order a is a / (2 z^2) (Mironov 2017,
Prop. 7), composed additively over the rounds and converted to (epsilon, delta) by ``dp-accounting``.
"""

from __future__ import annotations

from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant
from scipy.optimize import brentq


def central_accountant(num_clients: int, delta: float) -> RdpAccountant:
    """Flower's RDP accountant configured as ``build_strategy`` configures it for fixed clipping."""
    return RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )


def central_epsilon(noise_multiplier: float, rounds: int, num_clients: int, per_round: int, delta: float) -> float:
    """Client-level epsilon after ``rounds`` rounds of central DP with ``noise_multiplier``."""
    accountant = central_accountant(num_clients, delta)
    event = GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=per_round, population_size=num_clients)
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))


def central_noise_for(
    epsilon: float, rounds: int, num_clients: int, per_round: int, delta: float, tol: float = 1e-6
) -> float:
    """The noise multiplier whose central epsilon after ``rounds`` rounds is ``epsilon`` (root of the
    decreasing epsilon(z) by Brent's method on [0.01, 1000])."""
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")

    def gap(z: float) -> float:
        return central_epsilon(z, rounds, num_clients, per_round, delta) - epsilon

    lo, hi = 0.01, 1000.0
    if gap(lo) < 0 or gap(hi) > 0:
        raise ValueError(f"epsilon {epsilon} is out of reach for noise multipliers in [{lo}, {hi}]")
    return float(brentq(gap, lo, hi, xtol=tol))
