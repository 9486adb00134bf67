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

from fedmia.attacks import Knowledge, RoundSignals
from fedmia.audit.monitor import evaluate_monitor
from fedmia.data import Dataset, MembershipPlan, ReferenceDesign
from fedmia.experiment.checkpoint import Checkpoints
from fedmia.experiment.results import Results
from fedmia.fl.cluster import ReferenceTasks, cluster_reference_signals
from fedmia.models import predict_logits
from fedmia.seeding import derive_seed, rng
from fedmia.signals import Signals, gradient_norms
from fedmia.signals.release import QueryInterface
from fedmia.threats import BlackBox, Observation, Outsider, QueryCall, ReferenceTrainer, run_attacks
from fedmia.threats.base import flat_features, promoted_targets
from fedmia.threats.queries import stream as query_stream
from fedmia.threats.queries import stream_labels
from fedmia.threats.shadow_data import shadow_records
from fedmia.training import ModelSpec, Recipe, Records, train_reference_signals
from fedmia.training.batched import can_batch
from fedmia.training.train import HeldOut

# Builds the outsider's reference trainer; given a list, the trainer also appends the references'
# direct signals (no output layer) to it.
TrainerFactory = Callable[[list[Signals] | None], ReferenceTrainer | None]

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
    target: Any = None  # fedmia audit: a model trained elsewhere on plan.members, attacked instead of training one

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

    def held_out(self) -> HeldOut:
        """The target owner's held-out records (``plan.validation``, ``plan.reference``: never trained on,
        never candidates), for the defenses of ``train()`` that need them."""
        return HeldOut.of(self.data.x, self.data.y, self.plan.validation, self.plan.reference)

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
        self,
        tag: str,
        recipe: Recipe | None = None,
        init: Any = None,
        interface: QueryInterface | None = None,
        direct_copy: list[Signals] | None = None,
        white_box: bool = False,
    ) -> ReferenceTrainer:
        """The attacker's reference training: the target's architecture and recipe (training-time defenses
        included), same ``train()``; each reference is queried through ``interface`` (default: the
        released model's, query-time defenses included: the attacker knows them). With ``direct_copy``
        the references are also evaluated through ``direct`` (as a party holding weights queries), and
        those signals, one per eval set, are appended to it. ``white_box``: the references' per-record
        gradient norms too (``Signals.grad_norm``)."""

        def trainer(pool: Records, keep: np.ndarray, eval_sets: Sequence[Records]) -> list[Signals]:
            views: list[QueryInterface | None] = [interface or self.interface] * len(eval_sets)
            sets = list(eval_sets)
            if direct_copy is not None:
                views += [self.direct] * len(eval_sets)
                sets += sets
            why = can_batch(recipe or self.recipe)
            if self.cfg.audit.batched and why is not None:
                self.console.print(f"{tag}: reference models train one by one ({why})", highlight=False)
            args = (self.spec, recipe or self.recipe, pool, keep, sets)
            options: dict[str, Any] = {
                "seed": derive_seed(self.cfg.seed, tag, "references"),
                "init": init,
                "batched": self.cfg.audit.batched,
                "interface": views,
                "white_box": white_box,
            }
            with self.progress(f"{tag}: training {len(keep)} reference models", len(keep)) as done:
                tasks = self.reference_tasks()
                if tasks is None:
                    out = train_reference_signals(
                        *args, on_model_done=done, group=self.cfg.audit.reference_group, **options
                    )
                else:
                    out = cluster_reference_signals(tasks, *args, on_model_done=done, **options)
                    self.record_tasks(f"{tag}/models", tasks)
            if direct_copy is not None:
                direct_copy.extend(out[len(eval_sets) :])
            return out[: len(eval_sets)]

        return trainer

    def reference_tasks(self) -> ReferenceTasks | None:
        """With ``ray.address``: how references train on that cluster (one batched group per Ray task);
        None: they train here."""
        ray = self.cfg.ray
        if not ray.address:
            return None
        return ReferenceTasks(ray.address, self.cfg.audit.reference_group, ray.reference_tasks.num_cpus, placements=[])

    def record_tasks(self, what: str, tasks: ReferenceTasks) -> None:
        """metrics.json's record of where a cluster trained a party's references, summed over the calls
        under one name (a party may train references more than once): tasks, references, the nodes they ran on."""
        placed = tasks.placements or []
        entry = self.results.extra.setdefault("reference_tasks", {}).setdefault(
            what, {"address": tasks.address, "calls": 0, "tasks": 0, "references": 0, "node_ids": []}
        )
        entry["calls"] += 1
        entry["tasks"] += len(placed)
        entry["references"] += sum(p.size for p in placed)
        entry["node_ids"] = sorted(set(entry["node_ids"]) | {p.node_id for p in placed})

    def record_design(self, setting: str, party: str, design: ReferenceDesign | None, **about: Any) -> None:
        """metrics.json's record of a party's reference design: K, IN/OUT references per candidate."""
        summary = design.summary() if design is not None else {"references": 0}
        if self.recipe.function is not None:  # the report says who trained the references, and how
            trainer = f"{self.recipe.function} (user training function, one model at a time)"
            about = {"training_function": trainer, **about}
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
    ctx: Context,
    setting: str,
    model: Any,
    trainer: TrainerFactory | None = None,
    recipe_name: str = "centralized",
) -> tuple[Observation, Knowledge]:
    """The outsider's black-box attacks on a setting's final model.

    ``trainer(direct_copy)`` builds the trainer of its references, the way the target was trained
    (default: the centralized recipe, ``ctx.reference_trainer``). Returns the outsider's observation and
    the knowledge a party holding the weights gets from the same references: under a query-time
    defense the references are also evaluated directly (no output layer), as that party queries."""
    cfg, plan = ctx.cfg, ctx.plan
    records, is_member, labels = ctx.audit_targets()
    direct_copy: list[Signals] = []
    make_trainer = trainer or (
        lambda copy: ctx.reference_trainer(setting, direct_copy=copy, white_box=cfg.audit.white_box)
    )
    watch = cfg.audit.query_log or cfg.audit.monitor
    box = BlackBox(model, ctx.interface, seed=derive_seed(cfg.seed, setting, "outsider", "queries"), log=watch)
    shadow = cfg.audit.shadow_data
    population = ctx.records(plan.population)
    population_index: np.ndarray | None = plan.population
    if shadow.source != "population":  # the shadow models' data: derived from the population, or synthesized
        population = shadow_records(
            shadow.source,
            population,
            box,
            rng(cfg.seed, setting, "shadow-data"),
            n_classes=ctx.data.num_classes,
            **shadow.params(),
        )
        population_index = None  # made up (synthetic, or real records altered): -1 in the query log
    synthesis_queries = box.queries
    outsider = Outsider(
        box,
        ctx.records(records),
        population,
        n_references=cfg.audit.references,
        trainer=make_trainer(direct_copy if ctx.interface.layers else None),
        rng=rng(cfg.seed, setting, "outsider"),
        train_size=len(plan.members),
        layout=cfg.audit.reference_design,
        candidate_index=records,
        population_index=population_index,
    )
    observation = outsider.observe()
    holder = observation.knowledge
    if ctx.interface.layers:  # what the same references and the target tell a party without the output layers
        refs_direct = direct_copy if len(direct_copy) == 2 else [None, None]
        holder = dataclasses.replace(
            holder,
            references=refs_direct[0],
            keep=holder.keep if refs_direct[0] is not None else None,
            population=ctx.direct_query(f"{setting}-holder")(model, population),  # the outsider's (shadow) records
            ref_population=refs_direct[1],
            keep_population=holder.keep_population if refs_direct[1] is not None else None,
        )
    specs = ctx.attack_specs
    if cfg.audit.white_box:  # the weights too: each candidate's loss-gradient norm at the final model,
        # as a score (grad-norm) and as LiRA's statistic against the references' norms (lira-grad-norm)
        norms = gradient_norms(model, *ctx.records(records))
        knowledge = dataclasses.replace(observation.knowledge, rounds=RoundSignals(grad_norm=norms[None, :]))
        observation = Observation(dataclasses.replace(observation.target, grad_norm=norms), knowledge)
        specs = specs + [(name, {}) for name in ("grad-norm", "lira-grad-norm") if all(n != name for n, _ in specs)]
    outcomes = run_attacks(
        observation,
        specs,
        seed=ctx.attack_seed(setting, outsider.name),
        calls=box.calls,
        query_budget=cfg.audit.query_budget,
    )
    if cfg.audit.targets > 1 and observation.knowledge.references is not None:
        # LiRA's evaluation: targets-1 of the outsider's references in turn as the target (promoted_targets)
        per_target = [(outcomes, is_member)]
        for j, (seen, trained_on) in enumerate(promoted_targets(observation.knowledge, cfg.audit.targets - 1), 1):
            seed = derive_seed(ctx.attack_seed(setting, outsider.name), "target", j)
            per_target.append((run_attacks(seen, specs, seed=seed), trained_on))
        ctx.results.audit_pooled(setting, outsider.name, per_target, records, labels)
    else:
        ctx.results.audit(setting, outsider.name, outcomes, records, is_member, labels)
    ctx.record_design(setting, outsider.name, outsider.design, recipe=recipe_name)
    ctx.results.extra.setdefault("queries", {})[f"{setting}/{outsider.name}"] = {
        "interface": ctx.interface.describe(),
        "queries_to_target": box.queries,
        "shadow_data": shadow.source,
        "shadow_data_queries": synthesis_queries,
        "by_purpose": by_purpose(box.calls),
        "query_budget": cfg.audit.query_budget,
    }
    if cfg.audit.query_log:
        ctx.results.log_queries(setting, outsider.name, box.calls)
    if watch:  # the owner's monitor: calibrated on its training records, benign traffic = the test split
        ctx.results.extra.setdefault("query_monitor", {})[f"{setting}/{outsider.name}"] = evaluate_monitor(
            flat_features(ctx.records(plan.test)),
            query_stream(box.calls),
            rng(cfg.seed, setting, "monitor"),
            calibration=flat_features(ctx.records(plan.members)),
            labels=stream_labels(box.calls),
        )
    return observation, holder


def by_purpose(calls: Sequence[QueryCall]) -> dict[str, int]:
    """Model queries per call purpose."""
    out: dict[str, int] = {}
    for call in calls:
        out[call.purpose] = out.get(call.purpose, 0) + call.queries
    return out


def accuracy_interval(acc: float, n: int, confidence: float = 0.95) -> list[float]:
    """Wilson score interval of an accuracy measured on ``n`` independent test records
    (:meth:`scipy.stats.binomtest(...).proportion_ci`, method "wilson"; Wilson 1927): the test records are
    a sample, so the accuracy has a binomial sampling error."""
    from scipy.stats import binomtest

    ci = binomtest(round(acc * n), n).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def record_utility(ctx: Context, setting: str, model: Any, seconds: float, **extra: Any) -> None:
    # plan.members are exactly the records the target trained on (held-out records left them: with_holdout)
    train_acc = accuracy(model, ctx.records(ctx.plan.members))
    test_acc = accuracy(model, ctx.records(ctx.plan.test))
    ctx.results.utility[setting] = {
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "test_accuracy_ci": accuracy_interval(test_acc, len(ctx.plan.test)),
        "n_test": len(ctx.plan.test),
        "generalization_gap": train_acc - test_acc,
        "seconds": seconds,
        **extra,
    }
