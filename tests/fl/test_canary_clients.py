"""Canary clients (Andrew et al. 2024) inserted server-side by ``CanaryClients``, on the in-process toy federation.

Oracle: with the same seed, each round's aggregate with canaries is the aggregate without them (same
client updates, same central-DP noise) plus norm / n times the sum of that round's sampled canary
directions; the accountant's epsilon is unchanged (a canary is one more client of the same mechanism)."""

from __future__ import annotations

import numpy as np
import pytest

from fedmia.fl.inprocess import run_inprocess
from fedmia.fl.spec import Canaries, CentralDP
from fedmia.fl.strategy import build_strategy, canary_direction, canary_sampler
from fedmia.fl.views import ViewRecorder

CENTRAL = CentralDP(clipping="server-fixed", noise_multiplier=1.0, clipping_norm=0.5, delta=1e-5)


def flat(state) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate([v.detach().double().numpy().ravel() for v in state.values()])


def one_round(digits, canaries: Canaries | None):  # type: ignore[no-untyped-def]
    spec = digits.spec_for(seed=4, rounds=1, per_round=3, recipe=digits.recipe(), central_dp=CENTRAL, canaries=canaries)
    rec = ViewRecorder()
    out = run_inprocess(spec, digits.x, digits.y, initial_state=digits.initial_state, observers=[rec])
    return out, rec.views[0]


def test_canaries_add_norm_over_n_times_their_directions(digits) -> None:  # type: ignore[no-untyped-def]
    canaries = Canaries(count=6, seed=11, norm=CENTRAL.clipping_norm, per_round=4)
    plain, plain_view = one_round(digits, None)
    with_c, view = one_round(digits, canaries)
    # the real clients' updates are the same: canaries live on the server only
    for u, v in zip(plain_view.updates, view.updates, strict=True):
        assert np.array_equal(flat(u.state), flat(v.state))
    sampled = canary_sampler(canaries)(1)
    assert len(sampled) == 4 and sampled == canary_sampler(canaries)(1)  # seeded
    d = flat(plain.final_state).size
    expected = flat(plain.final_state) + CENTRAL.clipping_norm / 3 * sum(
        canary_direction(canaries, k, d) for k in sampled
    )
    np.testing.assert_allclose(flat(with_c.final_state), expected, atol=2e-6)  # float32 arrays
    assert with_c.server_epsilon == pytest.approx(plain.server_epsilon)


def test_canary_directions_are_unit_and_independent() -> None:
    c = Canaries(count=3, seed=1, norm=1.0, per_round=3)
    a, b = canary_direction(c, 0, 5000), canary_direction(c, 1, 5000)
    assert np.linalg.norm(a) == pytest.approx(1.0) and abs(a @ b) < 5 / np.sqrt(5000)
    assert np.array_equal(a, canary_direction(c, 0, 5000))


def test_canaries_refuse_adaptive_clipping_and_bad_counts(digits) -> None:  # type: ignore[no-untyped-def]
    adaptive = CentralDP(clipping="server-adaptive", noise_multiplier=0.1, clipping_norm=0.5)
    spec = digits.spec_for(seed=0, rounds=1, per_round=3, recipe=digits.recipe(), central_dp=adaptive,
                           canaries=Canaries(count=2, seed=0, norm=0.5, per_round=1))  # fmt: skip
    with pytest.raises(ValueError, match="fixed clipping"):
        build_strategy(spec)
    with pytest.raises(ValueError):
        Canaries(count=2, seed=0, norm=0.5, per_round=3)
