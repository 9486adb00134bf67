"""Runs an experiment: data -> training -> parties observe -> attacks -> audit -> run directory."""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console

from fedmia.data import Dataset, MembershipPlan, load_dataset, make_plan
from fedmia.data.datasets import check_finite
from fedmia.data.partition import partition_records
from fedmia.errors import InputError, TrainingDivergedError
from fedmia.experiment.checkpoint import CheckpointError, Checkpoints
from fedmia.experiment.config import ExperimentConfig
from fedmia.experiment.context import Context
from fedmia.experiment.exposed import exposure_summary
from fedmia.experiment.results import Results
from fedmia.experiment.settings import SETTINGS
from fedmia.experiment.settings import traits as setting_traits
from fedmia.fl.cluster import check_ray_address
from fedmia.fl.simulation import ray_runtime
from fedmia.models import use_device
from fedmia.seeding import derive_seed, rng
from fedmia.training import ModelSpec
from fedmia.training.defenses import apply_recipe, model_params
from fedmia.training.train import holdout_fractions


class _DivergenceReportedOnce(logging.Filter):
    """Drops Flower's log records of a client's diverged training: on Ray, Flower logs each such client
    exception with the actor's traceback (~100 lines a client), and the run fails with the divergence's
    one-line message anyway (the strategy recognises it in the error reply). Other client errors stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return TrainingDivergedError.MARK not in record.getMessage()


_FLWR_LOG = logging.getLogger("flwr")
if not any(isinstance(f, _DivergenceReportedOnce) for f in _FLWR_LOG.filters):
    _FLWR_LOG.addFilter(_DivergenceReportedOnce())


def prepare(
    cfg: ExperimentConfig, plan_for: Callable[[Dataset], MembershipPlan] | None = None
) -> tuple[Dataset, MembershipPlan]:
    """The data and the plan; ``plan_for(data)`` gives the plan instead (``fedmia audit``: the records a
    model trained elsewhere was trained on)."""
    data = load_dataset(cfg.data.dataset, **cfg.data.params)
    if plan_for is not None:
        return data, plan_for(data)
    s = cfg.data.split
    plan = make_plan(
        data.n,
        members=s.members,
        nonmembers=s.nonmembers,
        population=s.population,
        test=s.test,
        rng=rng(cfg.seed, "plan"),
    )
    if cfg.uses_federation():
        fed = cfg.federation
        parts = partition_records(
            plan.members,
            data.y[plan.members],
            fed.num_clients,
            fed.partition.name,
            derive_seed(cfg.seed, "partition") % (2**32),
            groups=data.groups[plan.members] if data.groups is not None else None,
            **fed.partition.params,
        )
        plan = plan.with_clients(parts)
    return data, plan


def build_context(
    cfg: ExperimentConfig, console: Console, plan_for: Callable[[Dataset], MembershipPlan] | None = None
) -> Context:
    """Load the data, make the plan and check the model fits: every input error surfaces here,
    before anything is trained or written. Only an ``InputError`` (raised where the bad input is
    found: a data file, a split the data cannot honour, a partition, a model that does not fit) is
    bad input; any other exception here is a bug and keeps its traceback (exit 1)."""
    if cfg.uses_ray():  # a cluster trains federations and references
        check_ray_address(cfg.ray.address)
    data, plan = prepare(cfg, plan_for)
    check_finite(data)
    defenses = cfg.defense_objects()
    spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes, model_params(cfg.model.params, defenses))
    spec.build(0)  # fail early (before any training) on a model that does not fit the data
    recipe = apply_recipe(cfg.train.recipe(), defenses)
    try:  # early stopping's and adversarial regularization's held-out records leave the members (rule 12)
        plan = plan.with_holdout(*holdout_fractions(recipe), rng=rng(cfg.seed, "holdout"))
    except ValueError as exc:
        raise InputError(f"{exc} (the defenses' held-out share; raise data.split.members)") from None
    shadow = cfg.audit.shadow_data
    if shadow.source == "noisy" and shadow.n is not None and shadow.n > len(plan.population):
        raise InputError(
            f"audit.shadow_data.n={shadow.n}: noisy shadow data re-draws features of distinct population "
            f"records, and the plan has {len(plan.population)}; lower n or raise data.split.population"
        )
    if shadow.source == "population" and shadow.n is not None:
        raise InputError("audit.shadow_data.n applies to derived or synthesized shadow data, not to 'population'")
    return Context(cfg, data, plan, spec, recipe, Results(), console, interface=cfg.query_interface())


def run_settings(ctx: Context, checkpoints: Checkpoints | None = None) -> Results:
    """Run each setting of the config; a setting finished in an earlier attempt is restored.

    With a federation on the Ray backend among the settings, Ray starts (``ray_runtime``; ray.init must run on the main
    thread) while the settings before the first federation, which do not need Ray (the centralized
    baseline), run on a worker thread: the compare run pays Ray's start-up (about 3 s on 2 cores)
    alongside the centralized stage instead of before it.
    """
    ctx.checkpoints = checkpoints
    total = Results()
    cfg = ctx.cfg
    with use_device(cfg.train.device):  # every predict_logits of the run on train.device
        if not cfg.uses_ray():  # no federation, or federations in process (federation.backend=inprocess)
            _run_each(ctx, checkpoints, total, cfg.settings)
        else:  # a cluster (ray.address) also trains the references: then nothing runs before Ray is up
            names = list(cfg.settings)
            head = (
                [] if cfg.ray.address else list(itertools.takewhile(lambda n: not setting_traits(n).federation, names))
            )
            early = _Background(_run_each, ctx, checkpoints, total, head) if head else None
            with ray_runtime(cfg.ray.address):
                if early is not None:
                    early.result()
                _run_each(ctx, checkpoints, total, names[len(head) :])
    total.extra["exposure"] = exposure_summary(total, ctx.data)
    ctx.results = total
    return total


class _Background:
    """``fn(*args)`` on a daemon thread, in a copy of the caller's context (``use_device``'s context
    variable); ``result()`` waits and re-raises its exception. A daemon, so that Ctrl-C in the main
    thread ends the run instead of waiting for the stage to finish."""

    def __init__(self, fn: Callable[..., None], *args: Any) -> None:
        self._error: BaseException | None = None
        run = contextvars.copy_context().run

        def target() -> None:
            try:
                run(fn, *args)
            except BaseException as exc:  # handed to the main thread by result()
                self._error = exc

        self._thread = threading.Thread(target=target, name="fedmia-stage", daemon=True)
        self._thread.start()

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def _run_each(ctx: Context, checkpoints: Checkpoints | None, total: Results, names: Sequence[str]) -> None:
    for name in names:
        saved = checkpoints.load_stage(name) if checkpoints is not None else None
        if saved is not None:
            assert checkpoints is not None
            try:
                stage = Results.from_checkpoint(*saved)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:  # parses, wrong layout
                raise CheckpointError(
                    f"checkpoint {checkpoints.root / f'stage-{name}.json'} (and its .npz) does not hold a finished "
                    f"stage ({type(exc).__name__}: {exc}); delete both to redo that step"
                ) from None
            ctx.console.print(f"{name}: restored from checkpoint")
        else:
            ctx.results = Results()
            try:
                SETTINGS.factory(name)(ctx)
            except Exception as exc:
                diverged = _divergence_in(exc)
                if diverged is None:
                    raise
                # the settings are at fault (exit 2), not the code: no traceback, no table from a NaN model
                raise diverged.within(f"setting {name!r}, model {ctx.cfg.model.name!r}") from None
            stage = ctx.results
            if checkpoints is not None:
                checkpoints.save_stage(name, *stage.to_checkpoint())
        total.merge(stage)


def _divergence_in(exc: BaseException) -> TrainingDivergedError | None:
    """The ``TrainingDivergedError`` that ``exc`` is or wraps (a federation's failure re-raises its
    server's error ``from`` it), or None."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        if isinstance(node, TrainingDivergedError):
            return node
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return None


def run_experiment(cfg: ExperimentConfig, console: Console, checkpoints: Checkpoints | None = None) -> Results:
    return run_settings(build_context(cfg, console), checkpoints)
