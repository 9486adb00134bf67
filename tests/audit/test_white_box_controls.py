"""Negative and positive controls of the white-box audit (fedmia.audit.canaries.audit_dp_sgd_white_box) on real,
tiny DP-SGD runs: a run that claims sigma = 4 but adds no noise (or does not clip) is flagged "the claim does not
hold"; with the claimed noise the bound stays below the accountant's epsilon and the GDP estimate lands near it.

Setting: 200 digits records, logistic regression (650 parameters), full batch (q = 1), 10 steps, sigma = 4, C = 1:
exactly sqrt(10) / 4 = 0.79-GDP (eps 3.30 at delta = 1e-5); Opacus's RDP accountant claims 3.62. 600 Dirac
canaries; each bound at 97.5% (their maximum at 95%). At most the one-run bounds reach 3.86 (Steinke et al.,
all 2 x 60 guesses right) and 4.84 (f-DP, all 120 of the top-120 right): above the claim, so the controls have
power. Measured on seeds 0-2:
  honest: GDP estimate 3.50, 3.23, 3.51 (mu 0.82, 0.77, 0.83); eps_LB 0.97, 1.08, 1.66; last-iterate view
    (no clean sums subtracted) GDP estimate 2.52, 2.36, 2.57, eps_LB 0.71, 0.72, 1.66;
  no noise: eps_LB 4.84 on every seed (all guesses right); no clipping (canaries of norm 10 C): 4.84 on every seed,
    and the same canaries against a run that clips them: 0.97, 1.08, 1.66.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from fedmia.audit.canaries import WhiteBoxAudit, audit_dp_sgd_white_box
from fedmia.data import load_dataset
from fedmia.training import DPSpec, ModelSpec, Recipe

N, STEPS, SIGMA, CANARIES = 200, 10, 4.0, 600


@functools.cache
def _world() -> tuple[np.ndarray, np.ndarray, ModelSpec, Recipe]:
    d = load_dataset("digits")
    x, y = d.x[:N], d.y[:N]
    spec = ModelSpec("logreg", tuple(x.shape[1:]), d.num_classes)
    rec = Recipe(epochs=STEPS, batch_size=N, lr=0.5, momentum=0.0, dp=DPSpec(noise_multiplier=SIGMA, max_grad_norm=1.0))
    return x, y, spec, rec


def _audit(mode: str, seed: int, norm: float | None = None) -> dict[str, WhiteBoxAudit]:
    x, y, spec, rec = _world()
    return audit_dp_sgd_white_box(spec, rec, (x, y), canaries=CANARIES, seed=seed, mode=mode, norm=norm)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_with_the_claimed_noise_the_bound_holds_and_the_estimate_is_near_the_accountant(seed: int) -> None:
    audits = _audit("honest", seed)
    a = audits["all_iterates"]
    assert a.accountant_epsilon == pytest.approx(3.62, abs=0.01) and a.steps == STEPS and a.sample_rate == 1.0
    assert a.claim_holds and a.epsilon_lb <= a.accountant_epsilon
    assert a.epsilon_lb > 0.5  # the canaries are seen: a blind audit would give 0
    assert a.gdp.epsilon == pytest.approx(a.accountant_epsilon, rel=0.25)
    assert audits["last_iterate"].claim_holds
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


def test_the_audit_needs_dp_sgd() -> None:
    x, y, spec, rec = _world()
    with pytest.raises(ValueError, match="needs DP-SGD"):
        audit_dp_sgd_white_box(spec, Recipe(epochs=1, batch_size=N), (x, y), canaries=10, seed=0)
