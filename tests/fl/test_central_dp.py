"""Central DP with server-side fixed clipping (Flower's wrapper): the server's epsilon and its noise.

One federation: 3 clients, all sampled, 2 rounds. Its epsilon must be the RDP epsilon of a
Gaussian mechanism composed once per round without amplification, and the aggregate must be
the mean of the clipped updates plus Gaussian noise of std noise_multiplier * clip / clients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmia.fl.spec import CentralDP

pytestmark = pytest.mark.slow

NOISE, CLIP, DELTA, CLIENTS, ROUNDS = 1.0, 0.1, 1e-5, 3, 2
CENTRAL = CentralDP(clipping="server-fixed", noise_multiplier=NOISE, clipping_norm=CLIP, delta=DELTA)


def gaussian_rdp_epsilon(noise: float, releases: int, delta: float) -> float:
    import dp_accounting

    acc = dp_accounting.rdp.RdpAccountant()  # add-or-remove-one neighbours, as configured for Flower
    acc.compose(dp_accounting.GaussianDpEvent(noise), releases)
    return float(acc.get_epsilon(delta))


def flat(state, keys) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate([state[k].detach().double().numpy().ravel() for k in keys])


@pytest.fixture(scope="module")
def central(digits):  # type: ignore[no-untyped-def]
    outcome, rec, _ = digits.run(seed=3, per_round=CLIENTS, rounds=ROUNDS, central_dp=CENTRAL)
    return outcome, rec.views


def test_server_epsilon_is_gaussian_rdp_composed_per_round(central) -> None:  # type: ignore[no-untyped-def]
    outcome, _ = central
    assert [r["round"] for r in outcome.rounds] == [1, 2]
    for r in outcome.rounds:
        assert r["server_epsilon"] == pytest.approx(gaussian_rdp_epsilon(NOISE, r["round"], DELTA), rel=0.02)
    assert outcome.rounds[1]["server_epsilon"] > outcome.rounds[0]["server_epsilon"]
    assert outcome.server_epsilon == outcome.rounds[-1]["server_epsilon"]


def test_aggregate_is_mean_of_clipped_updates_plus_calibrated_noise(digits, central) -> None:  # type: ignore[no-untyped-def]
    _, views = central
    keys = list(digits.initial_state)
    raw_norms = []
    for v in views:
        assert v.sampled == (0, 1, 2) and len(v.updates) == CLIENTS  # server-side clipping sees every update
        before = flat(v.global_before, keys)
        deltas = []
        for u in v.updates:
            assert u.metrics["unit-weight"] == 1
            d = flat(u.state, keys) - before
            raw_norms.append(np.linalg.norm(d))
            deltas.append(d * min(1.0, CLIP / np.linalg.norm(d)))
        residual = flat(v.global_after, keys) - (before + np.mean(deltas, axis=0))  # equal weights
        std = NOISE * CLIP / CLIENTS
        assert residual.std() == pytest.approx(std, rel=0.1)
        assert abs(residual.mean()) < 5 * std / np.sqrt(residual.size)
    # the view holds the updates as sent, before the server clipped them
    assert max(raw_norms) > 1.5 * CLIP


def test_final_model_is_the_last_noisy_aggregate(central) -> None:  # type: ignore[no-untyped-def]
    outcome, views = central
    for k, v in outcome.final_state.items():
        assert torch.equal(v, views[-1].global_after[k])
