"""Runs an experiment: data -> training -> parties observe -> attacks -> audit -> run directory."""

from __future__ import annotations

import contextlib

from rich.console import Console

from fedmia.data import Dataset, MembershipPlan, load_dataset, make_plan
from fedmia.data.partition import partition_records
from fedmia.errors import InputError
from fedmia.experiment.checkpoint import CheckpointError, Checkpoints
from fedmia.experiment.config import ExperimentConfig
from fedmia.experiment.context import Context
from fedmia.experiment.exposed import exposure_summary
from fedmia.experiment.results import Results
from fedmia.experiment.settings import SETTINGS
from fedmia.fl.cluster import check_ray_address
from fedmia.fl.simulation import ray_runtime
from fedmia.models import use_device
from fedmia.seeding import derive_seed, rng
from fedmia.training import ModelSpec
from fedmia.training.defenses import apply_recipe, model_params


def prepare(cfg: ExperimentConfig) -> tuple[Dataset, MembershipPlan]:
    data = load_dataset(cfg.data.dataset, **cfg.data.params)
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


def build_context(cfg: ExperimentConfig, console: Console) -> Context:
    """Load the data, make the plan and check the model fits: every input error surfaces here,
    before anything is trained or written. This is the input-validation stage: a ValueError or
    TypeError here (a split, partition or model the data cannot honour) is bad input."""
    if cfg.uses_federation() or cfg.ray.address:  # a cluster trains federations and references
        check_ray_address(cfg.ray.address)
    try:
        data, plan = prepare(cfg)
        defenses = cfg.defense_objects()
        spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes, model_params(cfg.model.params, defenses))
        spec.build(0)  # fail early (before any training) on a model that does not fit the data
    except InputError:
        raise
    except OSError as exc:  # an unreadable data file, a directory where a file should be, ...
        where = f" {exc.filename}" if exc.filename else ""
        raise InputError(f"cannot read the data{where}: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise InputError(f"{exc} (check data.split, data.params, model.params and federation.partition)") from None
    recipe = apply_recipe(cfg.train.recipe(), defenses)
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
    """Run each setting of the config; a setting finished in an earlier attempt is restored."""
    ctx.checkpoints = checkpoints
    total = Results()
    runtime: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if ctx.cfg.uses_federation() or ctx.cfg.ray.address:  # the cluster also trains the references
        runtime = ray_runtime(ctx.cfg.ray.address)
    with runtime, use_device(ctx.cfg.train.device):  # every predict_logits of the run on train.device
        _run_each(ctx, checkpoints, total)
    total.extra["exposure"] = exposure_summary(total, ctx.data)
    ctx.results = total
    return total


def _run_each(ctx: Context, checkpoints: Checkpoints | None, total: Results) -> None:
    for name in ctx.cfg.settings:
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
            SETTINGS.factory(name)(ctx)
            stage = ctx.results
            if checkpoints is not None:
                checkpoints.save_stage(name, *stage.to_checkpoint())
        total.merge(stage)


def run_experiment(cfg: ExperimentConfig, console: Console, checkpoints: Checkpoints | None = None) -> Results:
    return run_settings(build_context(cfg, console), checkpoints)
