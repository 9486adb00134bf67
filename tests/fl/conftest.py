"""A small digits federation (3 clients of unequal size, tiny MLP) shared by the Ray-backed tests."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from fedmia.fl.spec import Driver, FederationSpec
from fedmia.fl.views import ViewRecorder as Recorder
from fedmia.training import ModelSpec, Recipe

# Unequal partitions make a num-examples-weighted average differ from a plain mean, and give each
# client its own number of batches (ceil(size / BATCH) = 2, 3, 5), hence its own DP sample rate.
SIZES = (40, 75, 130)
BATCH = 32
NUM_CLIENTS = len(SIZES)


@dataclass
class Digits:
    """Data, partitions and model of the toy federation; ``run`` runs one federation."""

    x: np.ndarray
    y: np.ndarray
    partitions: tuple[np.ndarray, ...]
    test: np.ndarray
    spec: ModelSpec
    initial_state: dict[str, torch.Tensor]

    def batches(self, pid: int) -> int:
        return math.ceil(len(self.partitions[pid]) / BATCH)

    def recipe(self, **changes: Any) -> Recipe:
        return Recipe(**{"epochs": 1, "batch_size": BATCH, "lr": 0.05, "momentum": 0.9, **changes})

    def spec_for(self, *, seed: int, rounds: int, per_round: int, recipe: Recipe, **changes: Any) -> FederationSpec:
        """The toy federation as a FederationSpec (``changes``: strategy, central_dp, faults, ...)."""
        return FederationSpec(
            dataset="digits",
            partitions=self.partitions,
            model=self.spec,
            recipe=recipe,
            seed=seed,
            rounds=rounds,
            per_round=per_round,
            round_timeout=120.0,
            **changes,
        )

    def run(
        self,
        *,
        seed: int,
        rounds: int = 2,
        per_round: int = 2,
        recipe: Recipe | None = None,
        backend: str = "inprocess",
        **kwargs: Any,
    ) -> tuple[Any, Recorder, dict[int, dict[str, torch.Tensor]]]:
        """(outcome, recorded views, state evaluated by the server in each round). In process unless
        ``backend="ray"``: the modules whose subject is Flower's engine on Ray ask for it."""
        from fedmia.fl.simulation import run_federation
        from fedmia.models import predict_logits

        rec = Recorder()
        evaluated: dict[int, dict[str, torch.Tensor]] = {}
        model = self.spec.build(0)

        def evaluate(server_round: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
            evaluated[server_round] = {k: v.clone() for k, v in state.items()}
            model.load_state_dict(state)
            pred = predict_logits(model, self.x[self.test]).argmax(1).numpy()
            return {"test_accuracy": float((pred == self.y[self.test]).mean())}

        # keyword arguments that are FederationSpec fields (strategy, central_dp, ...) go into the spec
        spec_fields = {f.name for f in dataclasses.fields(FederationSpec)}
        changes = {k: kwargs.pop(k) for k in list(kwargs) if k in spec_fields}
        spec = self.spec_for(seed=seed, rounds=rounds, per_round=per_round, recipe=recipe or self.recipe(), **changes)
        driver = Driver(self.initial_state, evaluate, observers=[rec, *kwargs.pop("observers", ())])
        outcome = run_federation(spec, driver, backend=backend, **kwargs)  # type: ignore[arg-type]
        return outcome, rec, evaluated


@pytest.fixture(scope="session")
def digits() -> Digits:
    from fedmia.data import load_dataset

    d = load_dataset("digits")
    perm = np.random.default_rng(123).permutation(d.n)
    bounds = np.cumsum([0, *SIZES])
    parts = tuple(np.sort(perm[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    test = np.sort(perm[bounds[-1] : bounds[-1] + 200])
    spec = ModelSpec("mlp", d.input_shape, d.num_classes, {"hidden": [32]})
    init = {k: v.detach().clone() for k, v in spec.build(1).state_dict().items()}
    return Digits(d.x, d.y, parts, test, spec, init)
