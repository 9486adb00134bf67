"""A local-DP client audited from the server's seat (fedmia.audit.canaries.audit_local_dp_client_white_box): the
real client and server apps in process, Dirac canaries in client 0's DP-SGD, the statistic from the models the
server sends and receives.

Setting: digits, 2 clients of 100 records, logistic regression, C = 1, 600 canaries.
- One local step per round (1 epoch, batch 100: q = 1), 4 rounds, sigma = 3 claimed: the server sees every
  iterate; the mechanism is exactly sqrt(4) / 3 = 0.67-GDP (eps 2.70 at delta = 1e-5), Opacus's RDP accountant
  claims 2.98. Measured on seeds 0-2: honest GDP estimate 2.46, 2.40, 3.07, eps_LB 0.78, 0.52, 1.14; no noise:
  eps_LB 4.84 on every seed (all guesses right; the most 600 canaries can show).
- Two local epochs of batch 50 (q = 1/2, 4 steps a round): the server sees one update per round, the last
  iterate of the round; the clean gradient sums are unknown to it.
"""

from __future__ import annotations

import functools

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


def _audit(mode: str, seed: int, *, epochs: int = 1, batch: int = 100) -> WhiteBoxAudit:
    x, y, spec = _data()
    rec = Recipe(epochs=epochs, batch_size=batch, lr=0.5, momentum=0.0, dp=DPSpec(noise_multiplier=SIGMA))
    fed = FederationSpec(
        dataset="digits", partitions=(np.arange(100), np.arange(100, 200)), model=spec, recipe=rec, seed=0,
        rounds=ROUNDS, per_round=2,
    )  # fmt: skip
    return audit_local_dp_client_white_box(
        fed, (x, y), client=0, initial_state=spec.build(seed).state_dict(), canaries=CANARIES, seed=seed, mode=mode,  # type: ignore[arg-type]
    )  # fmt: skip


def test_the_server_catches_a_client_that_adds_no_noise() -> None:
    a = _audit("no_noise", 0)
    assert a.view == "all_iterates" and a.steps == ROUNDS and a.extra["rounds_trained"] == ROUNDS
    assert a.accountant_epsilon == pytest.approx(2.98, abs=0.01)  # the client's own report: sigma = 3 claimed
    assert not a.claim_holds and a.epsilon_lb > a.accountant_epsilon
    assert a.verdict().startswith("the claim does not hold")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_local_step_a_round_honest_holds_and_broken_is_caught(seed: int) -> None:
    honest = _audit("honest", seed)
    assert honest.view == "all_iterates" and honest.claim_holds
    assert honest.gdp.epsilon == pytest.approx(honest.accountant_epsilon, rel=0.25)
    assert not _audit("no_noise", seed).claim_holds


@pytest.mark.slow
def test_several_local_steps_give_the_last_iterate_of_each_round() -> None:
    a = _audit("honest", 0, epochs=2, batch=50)
    assert a.view == "last_iterate_per_round" and a.steps == ROUNDS * 4 and a.sample_rate == 0.5
    assert a.claim_holds
