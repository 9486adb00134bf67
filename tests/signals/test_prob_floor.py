"""The probability floor of ``signals_from_probs``: it stands in for a released 0 or an imputed (withheld)
mass, never for a probability the release gave as a positive number."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmia.signals import PROB_FLOOR, signals_from_logits, signals_from_probs
from fedmia.signals.release import QueryInterface, Rounding, Temperature, TopK

CAP = -np.log(PROB_FLOOR)  # 27.63: log(1 / floor), the largest logit_conf a floored 0 can give


def _signals(layers: tuple, logits: np.ndarray, y: np.ndarray):  # noqa: ANN202
    """Released signals of a linear "model" whose output on the i-th unit vector is logits[i] (exactly)."""
    model = torch.nn.Linear(len(logits), logits.shape[1], bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(logits.T, dtype=torch.float32))
    x = np.eye(len(logits), dtype=np.float32)
    return QueryInterface(layers=layers).signals(model, x, y, seed=0)


@pytest.mark.parametrize("gap", [20.0, 35.0, 50.0])
def test_a_temperature_one_release_keeps_the_logits_confidence(gap: float) -> None:
    """Temperature(1) releases softmax(z) itself: logit_conf is the logits' (gap - log 2 for two equal
    runners-up: 49.31 at a gap of 50), not capped at log(1 / floor) = 27.6."""
    logits = np.array([[gap, 0.0, 0.0], [0.0, 1.0, -2 * gap]])
    y = np.array([0, 2])
    want = signals_from_logits(logits, y)
    got = _signals((Temperature(1.0),), logits, y)
    np.testing.assert_allclose(got.logit_conf, want.logit_conf, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-9, atol=1e-12)
    assert got.logit_conf[1] < -CAP and got.loss[1] > CAP  # a record far below the floor, too


def test_released_zeros_and_imputed_mass_read_as_the_floor() -> None:
    """A rounded 1.0 / 0.0 vector: the others' 0 reads as the floor; a top-1 release whose withheld mass is
    float residue (1 - (1 - 2^-53) = 1.1e-16) reads as the floor, not as log(1 / 1.1e-16) = 36.7; a released
    positive below the floor is read as given."""
    one_minus = 1.0 - 2.0**-53
    s = signals_from_probs(
        np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [one_minus, np.nan, np.nan], [1 - 1e-15, 5e-16, 5e-16]]),
        np.array([0, 0, 0, 0]),
    )
    np.testing.assert_allclose(s.logit_conf[:3], [CAP, -CAP, CAP], rtol=1e-12)
    assert s.loss[1] == pytest.approx(CAP)
    assert s.logit_conf[3] == pytest.approx(np.log(1 - 1e-15) - np.log(1e-15), rel=1e-9)  # 34.5 > CAP
    # through a release: rounding to 2 decimals and a top-1 both floor
    logits = np.array([[50.0, 0.0, 0.0]])
    for layer in (Rounding(2), TopK(1)):
        out = _signals((layer,), logits, np.array([0]))
        assert out.logit_conf[0] == pytest.approx(CAP), layer
