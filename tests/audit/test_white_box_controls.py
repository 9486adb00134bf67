"""Negative and positive controls of the white-box audit (fedmia.audit.canaries.audit_dp_sgd_white_box) on real,
tiny DP-SGD runs: a run that claims sigma = 4 but adds no noise (or does not clip) is flagged "the claim does not
hold" by the (eps, delta) bound; one that claims sigma = 1 and adds no noise is flagged only under the Gaussian-DP
reading (below); with the claimed noise both verdicts hold and the GDP estimate lands near the accountant.

Setting: 200 digits records, logistic regression (650 parameters), full batch (q = 1), 10 steps, C = 1, 600 Dirac
canaries. Steinke et al.'s (eps, delta) bound at 97.5%, the f-DP and Clopper-Pearson GDP bounds at 98.75% each
(both verdicts together at 95%). **Why sigma = 4**: with 600 canaries the (eps, delta) bound can reach at most
3.86 (all 2 x 60 of Steinke et al.'s guesses right), so a control has power only against a claim below that;
sigma = 4 over 10 steps claims 3.62 (Opacus's RDP accountant; exactly sqrt(10) / 4 = 0.79-GDP, eps 3.30).

**sigma = 1 claimed** (accountant 19.05; exactly sqrt(10)-GDP, eps 17.86): no (eps, delta) bound within reach of a
cheap test can refute it. A one-run bound is at most about log of the canary count (3.86 here, 7.8 with 5,000
canaries), and a Clopper-Pearson (eps, delta) bound on m independent trials at most about log(m / log(1 / alpha)):
refuting eps = 19 needs on the order of e^19 ~ 10^8 trials. The Gaussian-DP reading can: a full-batch run's claimed
mechanism is exactly sqrt(T) / sigma-GDP (at most the mu 3.32 whose GDP curve meets the accountant's (19.05, 1e-5)),
and Nasr et al.'s Clopper-Pearson bound at perfect separation of 600 canaries is mu_LB 3.57 > 3.32. So the run is
flagged "the claim does not hold as Gaussian DP": it is not the mechanism it claims to be; that its (eps, delta)
guarantee fails is not proven.

Measured on seeds 0-2 (all iterates unless said):
  sigma = 4 honest: GDP estimate 3.50, 3.23, 3.51 (mu 0.82, 0.77, 0.83); (eps, delta) eps_LB 0.97, 1.08, 1.19;
    GDP mu_LB 0.35, 0.23, 0.36 (claim's mu 0.85); last iterate (no clean sums subtracted): estimate 2.52, 2.36,
    2.57, eps_LB 0.71, 0.47, 0.78;
  sigma = 4 no noise: eps_LB 3.86 on every seed (all guesses right), mu_LB 3.57; no clipping (canaries of norm
    10 C): eps_LB 3.86, mu_LB 2.56, 2.52, 2.41; the same canaries against a run that clips them: 0.97, 1.08, 1.19;
  sigma = 1 no noise: eps_LB 3.86 (< 19.05: the (eps, delta) claim stands), mu_LB 3.57, 3.57, 3.57 (> 3.32;
    eps under GDP 20.97); sigma = 1 honest: eps_LB 3.86, mu_LB 2.22, 2.31, 2.37 (true mu 3.16).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from fedmia.audit.canaries import WhiteBoxAudit, audit_dp_sgd_white_box
from fedmia.data import load_dataset
from fedmia.training import DPSpec, ModelSpec, Recipe

N, STEPS, SIGMA, CANARIES = 200, 10, 4.0, 600


@functools.cache
def _world(sigma: float = SIGMA) -> tuple[np.ndarray, np.ndarray, ModelSpec, Recipe]:
    d = load_dataset("digits")
    x, y = d.x[:N], d.y[:N]
    spec = ModelSpec("logreg", tuple(x.shape[1:]), d.num_classes)
    rec = Recipe(epochs=STEPS, batch_size=N, lr=0.5, momentum=0.0, dp=DPSpec(noise_multiplier=sigma, max_grad_norm=1.0))
    return x, y, spec, rec


def _audit(mode: str, seed: int, norm: float | None = None, sigma: float = SIGMA) -> dict[str, WhiteBoxAudit]:
    x, y, spec, rec = _world(sigma)
    return audit_dp_sgd_white_box(spec, rec, (x, y), canaries=CANARIES, seed=seed, mode=mode, norm=norm)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_with_the_claimed_noise_the_bound_holds_and_the_estimate_is_near_the_accountant(seed: int) -> None:
    audits = _audit("honest", seed)
    a = audits["all_iterates"]
    assert a.accountant_epsilon == pytest.approx(3.62, abs=0.01) and a.steps == STEPS and a.sample_rate == 1.0
    assert a.claim_holds and a.epsilon_lb <= a.accountant_epsilon
    assert a.gdp_claim_holds and a.claimed_mu is not None and 0.1 < a.gdp_mu_lb < a.claimed_mu
    assert a.epsilon_lb > 0.5  # the canaries are seen: a blind audit would give 0
    assert a.gdp.epsilon == pytest.approx(a.accountant_epsilon, rel=0.25)
    assert audits["last_iterate"].claim_holds and audits["last_iterate"].gdp_claim_holds
    assert "consistent with the claim" in a.verdict()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_run_without_noise_is_caught(seed: int) -> None:
    a = _audit("no_noise", seed)["all_iterates"]
    assert a.accountant_epsilon == pytest.approx(3.62, abs=0.01)  # the broken run still claims sigma = 4
    assert not a.claim_holds and a.epsilon_lb > a.accountant_epsilon
    assert a.verdict().startswith(f"the claim does not hold: ε ≥ {a.epsilon_lb:.2f} with 95% confidence")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_run_without_clipping_is_caught_by_canaries_above_the_clipping_norm(seed: int) -> None:
    a = _audit("no_clipping", seed, norm=10.0)["all_iterates"]
    assert not a.claim_holds and a.epsilon_lb > a.accountant_epsilon
    # the same canaries against a run that clips them: the claim holds
    assert _audit("honest", seed, norm=10.0)["all_iterates"].claim_holds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sigma_1_claim_without_noise_is_caught_as_gaussian_dp_only(seed: int) -> None:
    # module docstring: no (eps, delta) bound 600 canaries afford reaches 19; the Clopper-Pearson GDP bound
    # refutes the claimed sqrt(10)-GDP mechanism, and not the honest run's
    broken = _audit("no_noise", seed, sigma=1.0)["all_iterates"]
    assert broken.accountant_epsilon == pytest.approx(19.05, abs=0.01) and broken.claimed_mu is not None
    assert broken.claim_holds and broken.epsilon_lb < 4.0  # honestly: the (eps, delta) bound cannot get there
    assert not broken.gdp_claim_holds and broken.gdp_mu_lb > broken.claimed_mu + 0.15
    assert broken.verdict().startswith("the claim does not hold as Gaussian DP")
    honest = _audit("honest", seed, sigma=1.0)["all_iterates"]
    assert honest.claim_holds and honest.gdp_claim_holds and honest.gdp_mu_lb < math.sqrt(STEPS)


def test_the_audit_needs_dp_sgd() -> None:
    x, y, spec, rec = _world()
    with pytest.raises(ValueError, match="needs DP-SGD"):
        audit_dp_sgd_white_box(spec, Recipe(epochs=1, batch_size=N), (x, y), canaries=10, seed=0)
