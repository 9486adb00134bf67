"""A local-DP client audited from the server's seat (fedmia.audit.canaries.audit_local_dp_client_white_box): the
real client and server apps in process, Dirac canaries in client 0's DP-SGD, the statistic from the models the
server sends and receives.

Setting: digits, 2 clients of 100 records, logistic regression, C = 1, 600 canaries. Steinke et al.'s (eps, delta)
bound at 97.5%, the f-DP and Clopper-Pearson GDP bounds at 98.75% each (both verdicts together at 95%).
**Why sigma = 3**: 600 canaries can show at most eps_LB 3.86 (every Steinke guess right); the claim must lie below
that for the no-noise control to have power, and sigma = 3 over 4 rounds claims 2.98.
- One local step per round (1 epoch, batch 100: q = 1), 4 rounds, sigma = 3 claimed: every iterate is visible.
  The mechanism is exactly sqrt(4) / 3 = 0.67-GDP (eps 2.70 at delta = 1e-5); Opacus's RDP accountant claims 2.98.
  Two views: ``all_iterates`` is DP's adversary (the client's clean gradient sums subtracted: the DP audit);
  ``all_iterates_server`` the honest-but-curious server, which lacks the client's records (nothing subtracted).
  Measured on seeds 0-2: DP view honest mu_hat 0.603, 0.591, 0.733 (estimate 2.46, 2.40, 3.07), eps_LB 0.78, 0.52,
  0.93; server view honest mu_hat 0.554, 0.561, 0.684, eps_LB 0.44, 0.61, 0.75. No noise: DP view eps_LB 3.86 and
  mu_LB 3.57 on every seed; server view eps_LB 2.07, 2.44, 2.07 (below the claimed 2.98: the client's clean
  gradients, unknown to the server, hide part of the canaries) and mu_LB 1.32, 1.43, 1.35 (> the claim's 0.72).
- Two local epochs of batch 50 (q = 1/2, 4 steps a round): the server sees only the last iterate of each round,
  the clean sums unknown. Measured on seeds 0-2: honest mu_hat 0.569, 0.573, 0.684 (bootstrap 5%: 0.42, 0.43,
  0.55), eps_LB 0.56, 0.51, 1.08, mu_LB 0.12, 0.08, 0.21; no noise: eps_LB 2.07, 2.07, 2.44 (< 3.31 claimed),
  mu_LB 1.34, 1.32, 1.39 (> 0.78: flagged under the GDP reading only, which with q < 1 does not refute the
  subsampled-Gaussian claim itself); no clipping (canaries of norm 10 C): eps_LB 3.86, 3.51, 3.86 (> 3.31).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from fedmia.audit.canaries import WhiteBoxAudit, audit_local_dp_client_white_box
from fedmia.data import load_dataset
from fedmia.fl.spec import FederationSpec
from fedmia.training import DPSpec, ModelSpec, Recipe

SIGMA, ROUNDS, CANARIES = 3.0, 4, 600


@functools.cache
def _data() -> tuple[np.ndarray, np.ndarray, ModelSpec]:
    d = load_dataset("digits")
    return d.x, d.y, ModelSpec("logreg", tuple(d.x.shape[1:]), d.num_classes)


def _audit(
    mode: str, seed: int, *, epochs: int = 1, batch: int = 100, norm: float | None = None
) -> dict[str, WhiteBoxAudit]:
    x, y, spec = _data()
    rec = Recipe(epochs=epochs, batch_size=batch, lr=0.5, momentum=0.0, dp=DPSpec(noise_multiplier=SIGMA))
    fed = FederationSpec(
        dataset="digits", partitions=(np.arange(100), np.arange(100, 200)), model=spec, recipe=rec, seed=0,
        rounds=ROUNDS, per_round=2,
    )  # fmt: skip
    return audit_local_dp_client_white_box(
        fed, (x, y), client=0, initial_state=spec.build(seed).state_dict(), canaries=CANARIES, seed=seed,
        mode=mode, norm=norm,  # type: ignore[arg-type]
    )  # fmt: skip


def test_the_server_catches_a_client_that_adds_no_noise() -> None:
    views = _audit("no_noise", 0)
    assert set(views) == {"all_iterates", "all_iterates_server"}
    dp, server = views["all_iterates"], views["all_iterates_server"]
    assert dp.steps == ROUNDS and dp.extra["rounds_trained"] == ROUNDS
    assert dp.accountant_epsilon == pytest.approx(2.98, abs=0.01)  # the client's own report: sigma = 3 claimed
    # DP's adversary: an (eps, delta) refutation
    assert not dp.claim_holds and dp.epsilon_lb > dp.accountant_epsilon
    assert dp.verdict().startswith("the claim does not hold: ε ≥")
    # the server's own view: the client's clean gradients stay in its statistic; measured eps_LB 2.07 < 2.98, so
    # only the Gaussian-DP reading flags it (q = 1: the claimed mechanism is exactly 0.67-GDP)
    assert server.claim_holds and server.epsilon_lb < dp.epsilon_lb
    assert server.claimed_mu is not None and server.gdp_mu_lb > server.claimed_mu + 0.3
    assert server.verdict().startswith("the claim does not hold as Gaussian DP")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_local_step_a_round_estimates_the_exact_mu_and_holds(seed: int) -> None:
    # DP's adversary sees T = 4 Gaussian steps of shift 1/3: exactly mu = sqrt(T) / sigma = 0.667-GDP. mu_hat's
    # standard error ~ sqrt(1/n_in + 1/n_out + mu^2 / (2 m)) ~ 0.08; measured 0.603, 0.591, 0.733 (<= 1 se off)
    views = _audit("honest", seed)
    dp = views["all_iterates"]
    mu = math.sqrt(ROUNDS) / SIGMA
    se = math.sqrt(1 / dp.gdp.n_in + 1 / dp.gdp.n_out + mu * mu / (2 * CANARIES))
    assert abs(dp.gdp.mu - mu) < 3 * se
    for a in views.values():
        assert a.claim_holds and a.gdp_claim_holds
    assert not _audit("no_noise", seed)["all_iterates"].claim_holds


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_several_local_steps_give_the_last_iterate_of_each_round_and_see_the_canaries(seed: int) -> None:
    (a,) = _audit("honest", seed, epochs=2, batch=50).values()
    assert a.view == "last_iterate_per_round" and a.steps == ROUNDS * 4 and a.sample_rate == 0.5
    assert a.claim_holds and a.gdp_claim_holds
    # the canaries are seen (all-zero statistics would pass the two lines above): measured mu_hat >= 0.569 with
    # standard error ~0.08, eps_LB >= 0.51
    assert a.gdp.mu > 0.35 and a.epsilon_lb > 0.2


@pytest.mark.slow
def test_several_local_steps_controls_are_flagged_in_the_last_iterate_per_round_view() -> None:
    (broken,) = _audit("no_noise", 0, epochs=2, batch=50).values()
    # module docstring: the (eps, delta) bound stays below the claim here; the GDP reading flags it
    assert broken.view == "last_iterate_per_round" and broken.accountant_epsilon == pytest.approx(3.31, abs=0.01)
    assert broken.claimed_mu is not None and broken.gdp_mu_lb > broken.claimed_mu + 0.3
    assert not broken.gdp_claim_holds
    (unclipped,) = _audit("no_clipping", 0, epochs=2, batch=50, norm=10.0).values()
    assert not unclipped.claim_holds and unclipped.epsilon_lb > unclipped.accountant_epsilon
    (clipped,) = _audit("honest", 0, epochs=2, batch=50, norm=10.0).values()
    assert clipped.claim_holds and clipped.gdp_claim_holds
