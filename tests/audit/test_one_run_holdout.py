"""Steinke et al.'s one-run audit counts a canary as IN exactly when its coin put it into training: with a defense
that holds records out (early stopping, adversarial regularization), the held-out records come from the
ordinary training records, never from the included canaries (``audit_centralized``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import fedmia.audit.one_run as one_run
from fedmia.audit.one_run import audit_centralized, inclusion_coins
from fedmia.training import ModelSpec, Recipe
from fedmia.training.train import AdversarialRegularization, EarlyStopping


@pytest.mark.parametrize(
    "defense",
    [
        {"early_stopping": EarlyStopping(validation=0.3, patience=1)},
        {"adversarial": AdversarialRegularization(reference_fraction=0.25)},
        {
            "early_stopping": EarlyStopping(validation=0.2, patience=1),
            "adversarial": AdversarialRegularization(reference_fraction=0.25),
        },
    ],
    ids=["early-stopping", "adversarial", "both"],
)
def test_every_included_canary_is_trained_on_and_the_held_out_records_are_ordinary(
    defense: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    # ordinary records are negative in feature 0, canaries positive: each record's origin is readable from x
    xt = np.concatenate([-1 - rng.random((60, 1)), rng.normal(size=(60, 3))], 1).astype(np.float32)
    yt = rng.integers(0, 2, 60)
    xc = np.concatenate([1 + rng.random((40, 1)), rng.normal(size=(40, 3))], 1).astype(np.float32)
    yc = rng.integers(0, 2, 40)
    seen: dict[str, Any] = {}
    real_train = one_run.train

    def spy(model, x, y, recipe, *, generator, held_out=None):  # type: ignore[no-untyped-def]
        seen.update(x=x, held_out=held_out)
        return real_train(model, x, y, recipe, generator=generator, held_out=held_out)

    monkeypatch.setattr(one_run, "train", spy)
    spec = ModelSpec("logreg", (4,), 2, {})
    audit_centralized(spec, Recipe(epochs=2, batch_size=16, lr=0.1, **defense), (xt, yt), (xc, yc), seed=3)
    inc = inclusion_coins(40, 3)
    trained = seen["x"]
    canaries_trained = trained[trained[:, 0] > 0]
    # exactly the included canaries, every one of them
    assert sorted(map(tuple, canaries_trained)) == sorted(map(tuple, xc[inc]))
    held = [h for h in (seen["held_out"].validation, seen["held_out"].reference) if h is not None]
    assert held, "the defense held nothing out"
    for hx, _ in held:
        assert (hx[:, 0] < 0).all(), "a canary was held out"
    # the held-out records and the trained ordinary records partition the ordinary records
    n_held = sum(len(hy) for _, hy in held)
    assert n_held + int((trained[:, 0] < 0).sum()) == 60
