"""Runs an experiment: data -> training -> parties observe -> attacks -> audit -> run directory."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedmia.data import Dataset, MembershipPlan, load_dataset, make_plan
from fedmia.experiment.checkpoint import CheckpointError, Checkpoints
from fedmia.experiment.config import ExperimentConfig
from fedmia.experiment.results import Results
from fedmia.registry import Registry
from fedmia.seeding import derive_seed, rng, torch_generator
from fedmia.signals import Signals
from fedmia.threats import BlackBox, Outsider, ReferenceTrainer, run_attacks
from fedmia.training import ModelSpec, Recipe, Records, train, train_reference_signals
from fedmia.training.batched import can_batch


@dataclass
class Context:
    """What every setting of one run shares: config, data, plan, recipe, output and console."""

    cfg: ExperimentConfig
    data: Dataset
    plan: MembershipPlan
    spec: ModelSpec
    recipe: Recipe
    results: Results
    console: Console
    checkpoints: Checkpoints | None = None  # where finished stages and federated rounds are saved

    def records(self, idx: np.ndarray) -> Records:
        return self.data.x[idx], self.data.y[idx]

    @property
    def attack_specs(self) -> list[tuple[str, dict[str, Any]]]:
        return [(a.name, dict(a.params)) for a in self.cfg.audit.attacks]

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A rich progress bar; yields a callback to call once per finished unit."""
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda _k: bar.advance(task)

    def reference_trainer(self, tag: str, recipe: Recipe | None = None, init: Any = None) -> ReferenceTrainer:
        """The attacker's reference training: the target's architecture and recipe, same ``train()``."""

        def trainer(pool: Records, keep: np.ndarray, eval_sets: Sequence[Records]) -> list[Signals]:
            why = can_batch(recipe or self.recipe)
            if self.cfg.audit.batched and why is not None:
                self.console.print(f"{tag}: reference models train one by one ({why})", highlight=False)
            with self.progress(f"{tag}: training {len(keep)} reference models", len(keep)) as done:
                return train_reference_signals(
                    self.spec,
                    recipe or self.recipe,
                    pool,
                    keep,
                    eval_sets,
                    seed=derive_seed(self.cfg.seed, tag, "references"),
                    init=init,
                    on_model_done=done,
                    batched=self.cfg.audit.batched,
                )

        return trainer

    def audit_targets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(records, is_member, labels) of the candidate set, in the order parties score it."""
        t = self.plan.targets
        return t, self.plan.is_member(t), self.data.y[t]


# Settings are functions of the run's Context (they add to ctx.results): a registry of callables
# whose "product" is None.
SETTINGS: Registry[None] = Registry("setting")


def accuracy(model: Any, records: Records) -> float:
    from fedmia.models import predict_logits

    x, y = records
    if len(y) == 0:
        return float("nan")
    return float((predict_logits(model, x).argmax(1).numpy() == y).mean())


def outsider_audit(ctx: Context, setting: str, model: Any) -> None:
    """The outsider's black-box attacks on a setting's final model."""
    cfg, plan = ctx.cfg, ctx.plan
    records, is_member, labels = ctx.audit_targets()
    outsider = Outsider(
        BlackBox(model),
        ctx.records(records),
        ctx.records(plan.population),
        n_references=cfg.audit.references,
        trainer=ctx.reference_trainer(setting),
        rng=rng(cfg.seed, setting, "outsider"),
        train_size=len(plan.members),
    )
    outcomes = run_attacks(outsider.observe(), ctx.attack_specs)
    ctx.results.audit(setting, outsider.name, outcomes, records, is_member, labels)


def record_utility(ctx: Context, setting: str, model: Any, seconds: float, **extra: Any) -> None:
    train_acc = accuracy(model, ctx.records(ctx.plan.members))
    test_acc = accuracy(model, ctx.records(ctx.plan.test))
    ctx.results.utility[setting] = {
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "generalization_gap": train_acc - test_acc,
        "seconds": seconds,
        **extra,
    }


@SETTINGS.register("centralized")
def centralized(ctx: Context) -> None:
    """Train the target on all members at once; the outsider attacks it as a black box."""
    cfg, plan = ctx.cfg, ctx.plan
    t0 = time.perf_counter()
    model = ctx.spec.build(derive_seed(cfg.seed, "centralized", "init"))
    gen = torch_generator(cfg.seed, "centralized", "train")
    res = train(model, *ctx.records(plan.members), ctx.recipe, generator=gen)
    record_utility(ctx, "centralized", model, time.perf_counter() - t0, epsilon=res.epsilon)
    outsider_audit(ctx, "centralized", model)


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
    if "federated" in cfg.settings:
        from fedmia.data.partition import partition_records

        fed = cfg.federation
        parts = partition_records(
            plan.members,
            data.y[plan.members],
            fed.num_clients,
            fed.partition.name,
            derive_seed(cfg.seed, "partition") % (2**32),
            **fed.partition.params,
        )
        plan = plan.with_clients(parts)
    return data, plan


def build_context(cfg: ExperimentConfig, console: Console) -> Context:
    """Load the data, make the plan and check the model fits: every input error surfaces here,
    before anything is trained or written."""
    if "federated" in cfg.settings:
        from fedmia.fl.cluster import check_ray_address

        check_ray_address(cfg.ray.address)
    data, plan = prepare(cfg)
    spec = ModelSpec(cfg.model.name, data.input_shape, data.num_classes, dict(cfg.model.params))
    spec.build(0)  # fail early (before any training) on a model that does not fit the data
    return Context(cfg, data, plan, spec, cfg.train.recipe(), Results(), console)


def run_settings(ctx: Context, checkpoints: Checkpoints | None = None) -> Results:
    """Run each setting of the config; a setting finished in an earlier attempt is restored."""
    from fedmia.experiment import federated as _federated  # noqa: F401  (registers "federated")

    ctx.checkpoints = checkpoints
    total = Results()
    runtime: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if "federated" in ctx.cfg.settings:
        from fedmia.fl.simulation import ray_runtime

        runtime = ray_runtime(ctx.cfg.ray.address)
    with runtime:
        _run_each(ctx, checkpoints, total)
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
