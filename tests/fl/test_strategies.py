"""FedProx and FedAdam by name, each checked against what its update rule implies."""

from __future__ import annotations

import pytest
import torch

from fedmia.fl.observe import mean_state

pytestmark = pytest.mark.slow


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1).double() for v in state.values()])


def _round1(outcome_views):
    (view,) = outcome_views.views[:1]
    return view


def test_fedprox_pulls_client_updates_towards_the_global_model(digits) -> None:
    _, avg, _ = digits.run(seed=3, rounds=1, per_round=3, recipe=digits.recipe(epochs=3))
    _, prox, _ = digits.run(
        seed=3,
        rounds=1,
        per_round=3,
        recipe=digits.recipe(epochs=3, proximal_mu=5.0),
        strategy="fedprox",
        strategy_params={"proximal_mu": 5.0},
    )
    start = _flat(_round1(avg).global_before)
    for a, p in zip(_round1(avg).updates, _round1(prox).updates, strict=True):
        assert a.partition_id == p.partition_id
        assert (_flat(p.state) - start).norm() < 0.9 * (_flat(a.state) - start).norm()


def test_fedadam_takes_an_adaptive_step_along_the_mean_update(digits) -> None:
    eta = 0.01
    out, rec, _ = digits.run(
        seed=4, rounds=1, per_round=3, strategy="fedadam", strategy_params={"eta": eta, "eta_l": 0.05, "tau": 1e-9}
    )
    view = _round1(rec)
    before = _flat(view.global_before)
    mean_delta = _flat(mean_state([u.state for u in view.updates], [u.num_examples for u in view.updates])) - before
    adam_delta = _flat(out.final_state) - before
    assert not torch.allclose(adam_delta, mean_delta, atol=1e-6)  # not plain FedAvg
    moved = mean_delta.abs() > 1e-4
    agree = (torch.sign(adam_delta[moved]) == torch.sign(mean_delta[moved])).double().mean()
    assert agree > 0.99  # Adam's first step points along its pseudo-gradient, coordinate by coordinate
    # its size is set by eta, not by the update's magnitude: every moved coordinate steps about eta
    assert adam_delta[moved].abs().max() <= 2 * eta and adam_delta[moved].abs().median() > 0.1 * eta
