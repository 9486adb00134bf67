"""What every setting of one run shares (the ``Context``), and the steps all settings take:
record a target's utility, and let the outsider attack it."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedmia.attacks import RoundSignals
from fedmia.data import Dataset, MembershipPlan, ReferenceDesign
from fedmia.experiment.checkpoint import Checkpoints
from fedmia.experiment.results import Results
from fedmia.models import predict_logits
from fedmia.seeding import derive_seed, rng
from fedmia.signals import Signals, gradient_norms
from fedmia.signals.release import QueryInterface
from fedmia.threats import BlackBox, Observation, Outsider, ReferenceTrainer, run_attacks
from fedmia.training import ModelSpec, Recipe, Records, train_reference_signals
from fedmia.training.batched import can_batch

if TYPE_CHECKING:
    from fedmia.experiment.config import ExperimentConfig


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
    interface: QueryInterface = QueryInterface()  # what black-box parties get: query-time defenses, probes

    @property
    def direct(self) -> QueryInterface:
        """How a party holding the weights evaluates a model: no output layer between it and the model,
        the same label-only probes."""
        return QueryInterface(probes=self.interface.probes)

    def direct_query(self, tag: str) -> Callable[[Any, Records], Signals]:
        """``direct`` as a function of (model, records); the i-th call is seeded by (run seed, tag, i)."""
        calls = itertools.count()

        def query(model: Any, records: Records) -> Signals:
            return self.direct.signals(model, *records, seed=derive_seed(self.cfg.seed, tag, "query", next(calls)))

        return query

    def records(self, idx: np.ndarray) -> Records:
        return self.data.x[idx], self.data.y[idx]

    @property
    def attack_specs(self) -> list[tuple[str, dict[str, Any]]]:
        return [(a.name, dict(a.params)) for a in self.cfg.audit.attacks]

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A rich progress bar; yields a callback to call once per finished unit."""
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # a transient bar on a pipe or a CI log only leaves a blank line behind: show it on terminals only
        with Progress(*columns, console=self.console, transient=True, disable=not self.console.is_terminal) as bar:
            task = bar.add_task(description, total=total)
            yield lambda _k: bar.advance(task)

    def reference_trainer(
        self, tag: str, recipe: Recipe | None = None, init: Any = None, interface: QueryInterface | None = None
    ) -> ReferenceTrainer:
        """The attacker's reference training: the target's architecture and recipe (training-time defenses
        included), same ``train()``; each reference is queried through ``interface`` (default: the
        released model's, query-time defenses included: the attacker knows them)."""

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
                    interface=interface or self.interface,
                )

        return trainer

    def record_design(self, setting: str, party: str, design: ReferenceDesign | None, **about: Any) -> None:
        """metrics.json's record of a party's reference design: K, IN/OUT references per candidate."""
        summary = design.summary() if design is not None else {"references": 0}
        self.results.extra.setdefault("reference_design", {})[f"{setting}/{party}"] = {**summary, **about}

    def attack_seed(self, setting: str, party: str) -> int:
        """The root of the seeds of ``party``'s attacks in ``setting`` (each attack derives its own)."""
        return derive_seed(self.cfg.seed, setting, party, "attacks")

    def audit_targets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(records, is_member, labels) of the candidate set, in the order parties score it."""
        t = self.plan.targets
        return t, self.plan.is_member(t), self.data.y[t]


def accuracy(model: Any, records: Records) -> float:
    x, y = records
    if len(y) == 0:
        return float("nan")
    return float((predict_logits(model, x).argmax(1).numpy() == y).mean())


def outsider_audit(
    ctx: Context, setting: str, model: Any, trainer: ReferenceTrainer | None = None, recipe_name: str = "centralized"
) -> Observation:
    """The outsider's black-box attacks on a setting's final model; returns its observation (a party
    whose view includes the outsider's builds on it). ``trainer`` trains its references the way the
    target was trained (default: the centralized recipe)."""
    cfg, plan = ctx.cfg, ctx.plan
    records, is_member, labels = ctx.audit_targets()
    box = BlackBox(model, ctx.interface, seed=derive_seed(cfg.seed, setting, "outsider", "queries"))
    outsider = Outsider(
        box,
        ctx.records(records),
        ctx.records(plan.population),
        n_references=cfg.audit.references,
        trainer=trainer or ctx.reference_trainer(setting),
        rng=rng(cfg.seed, setting, "outsider"),
        train_size=len(plan.members),
    )
    observation = outsider.observe()
    specs = ctx.attack_specs
    if cfg.audit.white_box:  # the weights too: each candidate's loss-gradient norm at the final model
        norms = gradient_norms(model, *ctx.records(records))
        knowledge = dataclasses.replace(observation.knowledge, rounds=RoundSignals(grad_norm=norms[None, :]))
        observation = Observation(observation.target, knowledge)
        specs = specs + [("grad-norm", {})] if all(name != "grad-norm" for name, _ in specs) else specs
    outcomes = run_attacks(observation, specs, seed=ctx.attack_seed(setting, outsider.name))
    ctx.results.audit(setting, outsider.name, outcomes, records, is_member, labels)
    ctx.record_design(setting, outsider.name, outsider.design, recipe=recipe_name)
    ctx.results.extra.setdefault("queries", {})[f"{setting}/{outsider.name}"] = {
        "interface": ctx.interface.describe(),
        "queries_to_target": box.queries,
    }
    return observation


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
