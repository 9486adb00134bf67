"""Fixtures shared by the whole suite."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The parsed-dataset cache (``FEDMIA_CACHE_DIR``) in a folder of this session, never the user's home;
    set in the environment, so subprocesses (the CLI, Ray actors) use it too. Tests of the cache set their own."""
    folder = tmp_path_factory.mktemp("dataset-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDMIA_CACHE_DIR", str(folder))
        yield folder


# One intra-op thread count for the whole session, set once here and never changed by a test: torch's
# float results depend on it (summation order), so a statistical test measured under one count must not
# run under another depending on which modules ran before it. Subprocesses (the CLI, notebook kernels,
# Ray actors) inherit it through OMP_NUM_THREADS. FEDMIA_TEST_THREADS picks another count for the
# second numeric environment of `.ci/run` (with ATEN_CPU_CAPABILITY and MKL_ENABLE_INSTRUCTIONS).
THREADS = int(os.environ.get("FEDMIA_TEST_THREADS", "1"))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _threads_unchanged() -> Iterator[None]:
    """Fails the test that changes the session's thread count (and restores it for the next)."""
    yield
    changed = torch.get_num_threads()
    if changed != THREADS:
        torch.set_num_threads(THREADS)
        pytest.fail(f"the test changed torch's thread count from {THREADS} to {changed}")


class SharedRay:
    """One local Ray runtime for the modules that run federations in this process.

    Ray's start and stop cost ~4 s here (``ray.init`` ~3 s, ``ray.shutdown`` ~1.4 s), paid by every
    federation that starts its own. The first module that asks starts it (``fedmia.fl.simulation.ray_runtime``,
    the experiment's own runtime: Flower's per-simulation shutdown is skipped while it is held); later ones
    join it. A module that needs a runtime of its own (a cluster joined by address, injected hangs whose
    actors outlive their federation) calls ``down()`` first and the next module that asks starts a new one.
    """

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None

    def up(self) -> None:
        import ray

        if self._stack is None and not ray.is_initialized():
            from fedmia.fl.simulation import ray_runtime

            stack = contextlib.ExitStack()
            stack.enter_context(ray_runtime())
            self._stack = stack

    def down(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[SharedRay]:
    shared = SharedRay()
    try:
        yield shared
    finally:
        shared.down()


@pytest.fixture(scope="module")
def shared_ray(ray_session: SharedRay) -> None:
    """Join the session's Ray runtime (started on first use); mark a module with
    ``pytestmark = pytest.mark.usefixtures("shared_ray")``."""
    ray_session.up()


@pytest.fixture(scope="module")
def own_ray(ray_session: SharedRay) -> None:
    """Stop the session's Ray runtime, if up: this module starts (or joins) its own."""
    ray_session.down()


# --- the overfit digits target shared by the sign-convention and label-only tests -------------------------

OVERFIT_SEEDS = (0, 1, 2)  # every statistical claim on the overfit target is checked on these three seeds


@dataclasses.dataclass(frozen=True)
class OverfitWorld:
    """An MLP trained to 100% training accuracy on 100 digits: 100 members, 500 non-members (1% FPR is
    resolved by 5 false positives), 200 population records; the outsider's 16 paired references."""

    seed: int
    data: Any
    plan: Any
    spec: Any
    recipe: Any
    target: torch.nn.Module
    train_accuracy: float

    def records(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.data.x[idx], self.data.y[idx]

    @property
    def candidates(self) -> tuple[np.ndarray, np.ndarray]:
        return self.records(self.plan.targets)

    @property
    def population(self) -> tuple[np.ndarray, np.ndarray]:
        return self.records(self.plan.population)

    @property
    def is_member(self) -> np.ndarray:
        return np.asarray(self.plan.is_member(self.plan.targets))

    def reference_trainer(self, interface: Any = None) -> Any:
        """The outsider's reference trainer (``train_reference_signals``, the target's recipe), its
        references queried through ``interface``."""
        from fedmia.seeding import derive_seed
        from fedmia.training import train_reference_signals

        def trainer(pool: Any, keep: np.ndarray, eval_sets: Any) -> Any:
            seed = derive_seed(self.seed, "references")
            return train_reference_signals(
                self.spec, self.recipe, pool, keep, eval_sets, seed=seed, interface=interface
            )

        return trainer

    def observe(self, interface: Any = None, references: Any = None, n_references: int = 16) -> Any:
        """The outsider's observation through ``interface``, its references queried through ``references``
        (``"none"``: no references)."""
        from fedmia.seeding import derive_seed
        from fedmia.threats import BlackBox, Outsider

        outsider = Outsider(
            BlackBox(self.target, interface, seed=self.seed),
            self.candidates,
            self.population,
            n_references=0 if references == "none" else n_references,
            trainer=self.reference_trainer(None if isinstance(references, str) else references),
            rng=np.random.default_rng(derive_seed(self.seed, "outsider")),
            train_size=len(self.plan.members),
        )
        return outsider.observe()

    @functools.cached_property
    def full(self) -> Any:
        """The outsider's observation with full probability outputs and 16 references (shared by tests)."""
        return self.observe()


@functools.cache
def overfit_world(seed: int) -> OverfitWorld:
    from fedmia.data import load_dataset, make_plan
    from fedmia.seeding import derive_seed, torch_generator
    from fedmia.training import ModelSpec, Recipe, train

    data = load_dataset("digits")
    n = data.n
    plan = make_plan(
        n, members=100 / n, nonmembers=500 / n, population=200 / n, test=0.0, rng=np.random.default_rng(seed)
    )
    spec = ModelSpec("mlp", data.input_shape, data.num_classes, {"hidden": (512,), "activation": "tanh"})
    recipe = Recipe(epochs=100, batch_size=32, lr=0.05, momentum=0.9)
    target = spec.build(derive_seed(seed, "target-init"))
    res = train(target, data.x[plan.members], data.y[plan.members], recipe, generator=torch_generator(seed, "target"))
    return OverfitWorld(seed, data, plan, spec, recipe, target, res.accuracy)


@pytest.fixture(scope="session")
def overfit_worlds() -> list[OverfitWorld]:
    """The overfit target on each of ``OVERFIT_SEEDS``, trained once for the session."""
    return [overfit_world(s) for s in OVERFIT_SEEDS]
