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
from threadpoolctl import threadpool_limits


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
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)
torch.set_num_threads(THREADS)
# numpy's BLAS (OpenBLAS) was loaded before this file ran, with its own thread pool: limit it too (the
# environment variables above reach subprocesses only). Thousands of small numpy dot products ran 4-5x
# slower with two BLAS threads contending for 2 busy cores.
_LIMITS = threadpool_limits(limits=THREADS)  # applied now, for the whole session (never restored)


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
    n_references: int = 16

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

    def reference_trainer(self, interface: Any = None, white_box: bool = False) -> Any:
        """The outsider's reference trainer (``train_reference_signals``, the target's recipe), its
        references queried through ``interface`` (and their per-record gradient norms, ``white_box``)."""
        from fedmia.seeding import derive_seed
        from fedmia.training import train_reference_signals

        def trainer(pool: Any, keep: np.ndarray, eval_sets: Any) -> Any:
            seed = derive_seed(self.seed, "references")
            return train_reference_signals(
                self.spec, self.recipe, pool, keep, eval_sets, seed=seed, interface=interface, white_box=white_box
            )

        return trainer

    def observe(
        self, interface: Any = None, references: Any = None, n_references: int = 16, white_box: bool = False
    ) -> Any:
        """The outsider's observation through ``interface``, its references queried through ``references``
        (``"none"``: no references)."""
        from fedmia.seeding import derive_seed
        from fedmia.threats import BlackBox, Outsider

        outsider = Outsider(
            BlackBox(self.target, interface, seed=self.seed),
            self.candidates,
            self.population,
            n_references=0 if references == "none" else n_references,
            trainer=self.reference_trainer(None if isinstance(references, str) else references, white_box),
            rng=np.random.default_rng(derive_seed(self.seed, "outsider")),
            train_size=len(self.plan.members),
        )
        return outsider.observe()

    @functools.cached_property
    def full(self) -> Any:
        """The outsider's observation with full probability outputs and its references (shared by tests);
        it also holds what the other attacks read (``everything``): the same references, trained once."""
        return self.everything

    @functools.cached_property
    def everything(self) -> Any:
        """``full`` plus everything any registered attack reads, for tests that run every attack: the
        label-only and perturbation probes (target and references queried through them), white-box
        gradient norms (target and references), and a one-round federated view (``one_round_view``)."""
        return everything_view(self)


def one_round_view(init: torch.nn.Module, local: torch.nn.Module, others: list[torch.nn.Module], records: Any) -> Any:
    """The server's view of one FedAvg round in which the attacked client turned the global model ``init``
    into ``local`` and the other clients turned it into ``others``, on the candidate ``records``: what
    the round attacks read (``RoundSignals``: loss, global loss, the record's gradient at the global model
    against each client's descent step, its norm, logit confidences), computed here from the definitions
    (Li et al. 2023's cosine and difference, ``fedmia.fl.observe.GradientObserver``'s docstring) as an
    independent reference rather than through the observer."""
    from torch.func import functional_call, grad, vmap

    from fedmia.attacks import RoundSignals
    from fedmia.signals import compute_signals

    x, y = (torch.as_tensor(a) for a in records)
    names = [n for n, p in init.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in init.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in init.named_buffers()}
    init.eval()

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(init, (p, buffers), (xi[None],))
        return torch.nn.functional.cross_entropy(out, yi[None])

    per_record = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    g = torch.cat([per_record[n].reshape(len(y), -1) for n in names], 1).double()  # (n, P)

    def flat(m: torch.nn.Module) -> torch.Tensor:
        state = dict(m.named_parameters())
        return torch.cat([state[n].detach().reshape(-1) for n in names]).double()

    start = flat(init)
    g_norm = g.norm(dim=1)

    def cosine(step: torch.Tensor) -> np.ndarray:
        return (g @ step / (g_norm * step.norm()).clamp_min(1e-30)).numpy()

    def step_of(m: torch.nn.Module) -> torch.Tensor:
        return start - flat(m)  # the client's descent step

    mine = compute_signals(local, *records)
    step = step_of(local)
    cos = cosine(step)
    diff = ((2 * (g @ step) - (g * g).sum(1)) / (step.norm() + (step[None] - g).norm(dim=1))).numpy()
    theirs = [compute_signals(m, *records) for m in others]
    rounds = RoundSignals(
        loss=np.asarray(mine.loss)[None],
        grad_cosine=cos[None],
        grad_difference=diff[None],
        logit_conf=np.asarray(mine.logit_conf)[None],
        global_loss=np.asarray(compute_signals(init, *records).loss)[None],
        grad_norm=g_norm.numpy()[None],  # at the global model the round started from
    )
    others_view = RoundSignals(
        loss=np.stack([t.loss for t in theirs])[None],
        grad_cosine=np.stack([cosine(step_of(m)) for m in others])[None],  # the others' cosines only
        logit_conf=np.stack([t.logit_conf for t in theirs])[None],
    )
    return rounds, others_view


def everything_view(world: Any) -> Any:
    """``OverfitWorld.everything``: the target starts from the initialization ``overfit_world`` builds."""
    import copy

    from fedmia.seeding import derive_seed, torch_generator
    from fedmia.signals import gradient_norms
    from fedmia.signals.release import Probes, QueryInterface, query_augmentations
    from fedmia.threats import Observation
    from fedmia.training import train

    # the random-direction boundary baseline: 2 x 5 queries a record (HopSkipJump's default 2,500 on the target
    # and every reference would cost minutes; its own tests are tests/signals/test_hopskipjump.py); LiRA's
    # augmented queries: the record and its mirror
    probes = QueryInterface(
        (),
        Probes(
            copies=8,
            directions=2,
            steps=5,
            perturbations=2,
            boundary_method="random",
            augmentations=query_augmentations(flip=True),
        ),
    )
    obs = world.observe(probes, references=probes, n_references=world.n_references, white_box=True)
    init = world.spec.build(derive_seed(world.seed, "target-init"))
    others = []
    for k, chunk in enumerate(np.array_split(world.plan.population, 4)):  # 4 other clients of 50 records
        other = copy.deepcopy(init)
        train(other, *world.records(chunk), world.recipe, generator=torch_generator(world.seed, "other", k))
        others.append(other)
    rounds, others_view = one_round_view(init, world.target, others, world.candidates)
    norms = gradient_norms(world.target, *world.candidates)
    # the white-box party's grad-norm reads the norms at the model it holds (as fedmia.experiment.context
    # does for audit.white_box), not at the round's starting point, where a first round carries no signal
    rounds = dataclasses.replace(rounds, grad_norm=norms[None])
    knowledge = dataclasses.replace(obs.knowledge, rounds=rounds, others=others_view)
    return Observation(dataclasses.replace(obs.target, grad_norm=norms), knowledge)


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


# --- two workers (pytest-xdist, `make test` runs `-n 2`) ----------------------------------


# Modules that start Ray, in two units that run side by side on the two workers. "ray-shared": modules that join
# the worker's session runtime (``shared_ray``) and run federations on it, one after another. "ray-own": modules
# whose Ray lives in processes of their own (a `fedmia run` subprocess, `flwr run`'s SuperExec, a `ray start`
# head with its own --temp-dir), never the session runtime. Two local Ray instances on one machine are
# independent: ``ray.init()`` without an address starts a new one unless RAY_ADDRESS or a default-temp-dir
# `ray start` names one, and every `ray start` here uses a temp dir of its own. Modules that read the shared
# overfit targets: on one worker, so the targets train once. Every other module is a unit of its own. A test
# that starts Ray from a module missing here fails at collection (``pytest_itemcollected``).
RAY_SHARED_MODULES = frozenset(
    {
        "tests/fl/test_federation.py",
        "tests/fl/test_inprocess.py",
        "tests/training/test_divergence.py",
    }
)
RAY_OWN_MODULES = frozenset(
    {
        "tests/experiment/test_resume.py",
        "tests/fl/test_cluster_references.py",
        "tests/fl/test_faults.py",
        "tests/fl/test_flwr_run.py",
        "tests/fl/test_ray_cluster.py",
        "tests/test_flower_app_example.py",
    }
)
RAY_MODULES = RAY_SHARED_MODULES | RAY_OWN_MODULES
OVERFIT_MODULES = frozenset({"tests/test_sign_convention.py", "tests/attacks/test_label_only.py"})
# The units that take longest (measured with --durations on this 2-core machine), started first so that no long
# unit begins when the other worker is nearly done; the order changes wall time only, never what runs.
LONGEST_FIRST = (
    "ray-own",
    "ray-shared",
    "tests/experiment/test_adversaries.py",
    "overfit-targets",
    "tests/test_notebooks.py",
    "tests/attacks/test_generative.py",
)


def xdist_unit(nodeid: str) -> str:
    """The scheduling unit of a test: ``ray-shared``, ``ray-own``, ``overfit-targets``, or its module."""
    module = nodeid.split("::", 1)[0]
    if module in RAY_SHARED_MODULES:
        return "ray-shared"
    if module in RAY_OWN_MODULES:
        return "ray-own"
    return "overfit-targets" if module in OVERFIT_MODULES else module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest units first (``LONGEST_FIRST``), the rest in collection order: xdist hands out units in the
    order their first test was collected (``pytest_configure`` turns off its reordering by test count)."""
    rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(xdist_unit(item.nodeid), len(rank)))  # stable: order within a unit kept


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: by first collection, not by test count
        config.option.loadscopereorder = False


def pytest_itemcollected(item: pytest.Item) -> None:
    """Guards the lists above: a test that starts Ray or reads the overfit targets must be in their module list."""
    names = set(getattr(item, "fixturenames", ()))
    module = item.nodeid.split("::", 1)[0]
    if (names & {"shared_ray", "own_ray"} or item.get_closest_marker("ray") is not None) and module not in RAY_MODULES:
        raise pytest.UsageError(f"{item.nodeid} starts Ray: add {module} to RAY_MODULES in tests/conftest.py")
    if "overfit_worlds" in names and module not in OVERFIT_MODULES:
        raise pytest.UsageError(f"{item.nodeid} reads the overfit targets: add {module} to OVERFIT_MODULES")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: inert where it is not installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist (`make test` runs ``-n 2``) schedules whole units (``xdist_unit``) on a worker, so each
    module's module-scoped fixtures are built once and Ray modules never run side by side."""
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(nodeid)

    return Units(config, log)
