"""Typed experiment config: YAML + ``key=value`` overrides, parsed once into a frozen object.

Every field is validated here; a bad key, type or value raises ``ConfigError`` whose message
names the field and what is allowed. The CLI turns it into exit code 2.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from fedmia.attacks import ATTACKS, GENERATIVE_ATTACKS
from fedmia.data import DATASETS
from fedmia.data.datasets import dataset_traits
from fedmia.data.partition import PARTITIONERS, partition_traits
from fedmia.errors import InputError
from fedmia.experiment.configfiles import ConfigFileError, resolve_config
from fedmia.experiment.settings import SETTINGS
from fedmia.experiment.settings import traits as setting_traits
from fedmia.fl.strategy import CLIPPING, STRATEGIES, ClippingMode, client_recipe_changes
from fedmia.models import MODELS, model_family, resolve_device
from fedmia.registry import ParamsError
from fedmia.signals.release import Probes, QueryInterface, query_augmentations
from fedmia.training import DPSpec, Recipe
from fedmia.training.defenses import DEFENSES, Defense, apply_recipe
from fedmia.training.optim import OPTIMIZERS
from fedmia.training.references import BATCH_GROUP
from fedmia.training.train import check_recipe
from fedmia.training.user import check_function

# YAML's booleans must not pass for numbers (pydantic's lax mode reads `epochs: true` as 1), nor
# numbers for booleans; ints are still accepted where a float is expected.
StrictInt = Annotated[int, Strict()]
StrictFloat = Annotated[float, Strict(), AllowInfNan(False)]
StrictBool = Annotated[bool, Strict()]


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; accept YAML 1.2 floats so it is a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


class ConfigError(InputError):
    """The config is invalid; the message names the field(s) and what is allowed."""


def _known_name(registry: Any, name: str) -> None:
    """Registries name their kind ('dataset', 'attack', ...); the message lists what is registered."""
    if name not in registry:
        raise ValueError(
            f"unknown {registry.kind} {name!r}; available: {', '.join(registry.available())} "
            "(or an import path package.module:factory)"
        )


def _checked_params(registry: Any, name: str, params: dict[str, Any]) -> None:
    """The entry's declared parameters validate ``params`` (unknown names, wrong types) at load time."""
    if name in registry:
        try:
            registry.validate(name, params)
        except ParamsError as exc:
            raise ValueError(str(exc)) from None


def _bare_names(v: Any) -> Any:
    """A YAML list of entries may name an entry without parameters: ``[loss, {name: rmia, params: ...}]``."""
    if isinstance(v, list | tuple):
        return [{"name": a} if isinstance(a, str) else a for a in v]
    return v


def _twice(names: Sequence[str]) -> list[str]:
    """The names listed more than once, sorted."""
    return sorted({n for n in names if names.count(n) > 1})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Strict):
    """Fractions of the dataset's records for each role (sum <= 1)."""

    members: StrictFloat = Field(0.3, gt=0, lt=1)
    nonmembers: StrictFloat = Field(0.3, gt=0, lt=1)
    population: StrictFloat = Field(0.3, gt=0, lt=1)
    test: StrictFloat = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _sum(self) -> SplitConfig:
        total = self.members + self.nonmembers + self.population + self.test
        if total > 1 + 1e-9:
            raise ValueError(f"split fractions sum to {total:g}; they must sum to at most 1")
        return self


class DataConfig(_Strict):
    dataset: str = "digits"
    params: dict[str, Any] = Field(default_factory=dict)
    split: SplitConfig = SplitConfig()

    @field_validator("dataset")
    @classmethod
    def _known(cls, v: str) -> str:
        _known_name(DATASETS, v)
        return v

    @model_validator(mode="after")
    def _params(self) -> DataConfig:
        _checked_params(DATASETS, self.dataset, self.params)
        return self


class ModelConfig(_Strict):
    name: str = "mlp"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        _known_name(MODELS, v)
        return v

    @model_validator(mode="after")
    def _params(self) -> ModelConfig:
        _checked_params(MODELS, self.name, self.params)
        return self


class DPConfig(_Strict):
    noise_multiplier: StrictFloat | None = Field(None, ge=0)
    target_epsilon: StrictFloat | None = Field(None, gt=0)
    max_grad_norm: StrictFloat = Field(1.0, gt=0)
    delta: StrictFloat = Field(1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    poisson_sampling: StrictBool = True

    @model_validator(mode="after")
    def _one_of(self) -> DPConfig:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give exactly one of noise_multiplier or target_epsilon")
        if not self.poisson_sampling:
            # Opacus's accountants compose Poisson-subsampled Gaussian mechanisms at rate 1 / batches per
            # epoch; DP-SGD over shuffled fixed-size batches is a different mechanism whose epsilon can be
            # materially larger (Chua, Ghazi, Kamath, Kumar, Manurangsi, Sinha, Zhang 2024, "How Private
            # are DP-SGD Implementations?"). fedmia reports no epsilon that does not hold.
            raise ValueError(
                "poisson_sampling=false trains on shuffled fixed-size batches, but the privacy accountant "
                "computes epsilon for Poisson sampling, and shuffled DP-SGD can be materially less private "
                "(Chua et al. 2024): the reported epsilon would not hold. Keep poisson_sampling: true"
            )
        return self

    def spec(self) -> DPSpec:
        return DPSpec(**self.model_dump())


class TrainConfig(_Strict):
    epochs: StrictInt = Field(30, ge=1)
    batch_size: StrictInt = Field(64, ge=1)
    lr: StrictFloat = Field(0.1, gt=0)
    optimizer: str = Field("sgd", description="a registered optimizer (fedmia list)")
    momentum: StrictFloat = Field(0.9, ge=0, lt=1)
    weight_decay: StrictFloat = Field(0.0, ge=0)
    dp: DPConfig | None = None
    device: Literal["auto", "cpu", "cuda"] = Field(
        "cpu",
        description="where training (target, FL clients, batched references) and inference run: "
        "cpu, cuda, or auto (cuda when torch sees a GPU, else cpu)",
    )
    augment: tuple[Literal["crop", "flip"], ...] = Field(
        (),
        description="augmentation of every training batch (image data): crop (zero padding 4, random shift) "
        "and/or flip (left-right, probability 1/2); [] for none. Target, clients and references alike",
    )
    function: str | None = Field(
        None,
        description="import path of your training function, fit(model, x, y, recipe, generator), used for the "
        "target, every FL client and every reference instead of fedmia's loop (references then train one by one)",
    )

    @field_validator("augment")
    @classmethod
    def _augment_once(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        twice = _twice(list(v))
        if twice:
            raise ValueError(f"augment lists {', '.join(twice)} twice")
        return v

    @field_validator("device")
    @classmethod
    def _device_present(cls, v: str) -> str:
        resolve_device(v)  # "cuda" without a GPU: a clear error here, before anything runs
        return v

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        _known_name(OPTIMIZERS, v)
        return v

    @model_validator(mode="after")
    def _user_function(self) -> TrainConfig:
        if self.function is not None:  # an import path that resolves, and no option of fedmia's own loop
            check_function(self.function, self.recipe())
        return self

    def recipe(self, **changes: Any) -> Recipe:
        fields = self.model_dump(exclude={"dp"})
        fields.update(changes)
        return Recipe(**fields, dp=self.dp.spec() if self.dp else None)


class _EntrySpec(_Strict):
    """A registered name and its typed parameters, checked against the entry's signature at load time."""

    registry: ClassVar[Any]
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        _known_name(cls.registry, v)
        return v

    @model_validator(mode="after")
    def _params(self) -> _EntrySpec:
        _checked_params(self.registry, self.name, self.params)
        return self


class AttackSpec(_EntrySpec):
    registry = ATTACKS

    @model_validator(mode="after")
    def _in_range(self) -> AttackSpec:
        try:  # a value out of range (rmia a=-1): the error names the attack and the parameter
            ATTACKS.create(self.name, run_seed=0, **self.params)
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None
        return self


class GenerativeAttackSpec(_EntrySpec):
    """One attack on a generator (``fedmia.attacks.generative``): a registered name and its typed parameters.

    Values out of range (a percentile of 0) fail at load time too. No config section reads it yet: the
    generator audit lists these.
    """

    registry = GENERATIVE_ATTACKS

    @model_validator(mode="after")
    def _in_range(self) -> GenerativeAttackSpec:
        GENERATIVE_ATTACKS.create(self.name, **self.params)  # a ParamsError (a ValueError) names the parameter
        return self


class DefenseSpec(_EntrySpec):
    """One defense of the ``defenses:`` section: a registered name and its typed parameters."""

    registry = DEFENSES

    @model_validator(mode="after")
    def _in_range(self) -> DefenseSpec:
        self.create()  # a value out of range (dropout 1.5) raises ValueError naming the parameter
        return self

    def create(self) -> Defense:
        return DEFENSES.create(self.name, **self.params)


class ActiveClientConfig(_Strict):
    """Nasr et al. 2019's active participant: gradient ascent on its targets in one round, run as a
    separate federation (same seed and partitions) because it perturbs the training."""

    enabled: StrictBool = False
    partition: StrictInt = Field(0, ge=0, description="partition id of the malicious participant")
    round: StrictInt | None = Field(None, ge=1, description="round of the ascent (default: federation.rounds - 1)")
    steps: StrictInt = Field(
        2, ge=1, le=10_000, description="steps of the per-record ascent: each moves every target up its own gradient"
    )
    lr: StrictFloat = Field(
        0.5, gt=0, description="distance each step moves the parameters along every target's unit gradient"
    )
    ridge: StrictFloat = Field(
        0.1, gt=0, description="ridge of the equal-push solve; large values give the plain sum of unit gradients"
    )


class ProbesConfig(_Strict):
    """The query budget of the probes a querying party runs around each record: the label-only probes of
    Choquette-Choo et al. 2021 (robustness, boundary distance), the perturbation probe and LiRA's augmented
    queries (Carlini et al. 2022). A probe runs only when an attack in audit.attacks reads it
    (label-augmentation, label-boundary, perturbation, lira-augmented)."""

    copies: StrictInt = Field(32, ge=1, le=10_000, description="Gaussian copies per record (robustness)")
    noise: StrictFloat = Field(0.1, gt=0, description="std of the copies' noise, in input units")
    boundary: Literal["hopskipjump", "random"] = Field(
        "hopskipjump", description="boundary distance: HopSkipJump (Chen et al. 2020) or the random-direction baseline"
    )
    boundary_queries: Annotated[StrictInt, Field(ge=100, le=1_000_000)] | Literal["auto"] = Field(
        "auto", description="hopskipjump: queries per record, or auto: ceil(2500 max(1, D / 64)) for D input features"
    )
    directions: StrictInt = Field(8, ge=1, le=1000, description="random: random directions per record (boundary)")
    steps: StrictInt = Field(8, ge=1, le=64, description="random: bisection queries per direction")
    max_distance: StrictFloat = Field(8.0, gt=0, description="random: farthest boundary distance searched")
    perturbations: StrictInt = Field(8, ge=1, le=10_000, description="modified copies per record (perturbation)")
    perturb_mode: Literal["remove", "flip"] = Field("remove", description="a feature set to 0, or flipped (1 - x)")
    perturb_features: StrictInt = Field(1, ge=1, description="features changed in each modified copy")
    augment_flip: StrictBool = Field(True, description="augmented queries: the left-right mirror of each record too")
    augment_shift: StrictInt = Field(
        0, ge=0, le=8, description="augmented queries: shifts up to this many pixels each way (1 with flip: 18)"
    )
    augment_stride: StrictInt = Field(1, ge=1, le=8, description="augmented queries: step between shifts")

    def probes(self, reads: frozenset[str]) -> Probes | None:
        """The probes the attacks reading ``reads`` need (the others switched off), or None."""
        if not reads & {"robustness", "boundary", "perturbation", "augmented"}:
            return None
        augmented = "augmented" in reads
        return Probes(
            copies=self.copies if "robustness" in reads else 0,
            noise=self.noise,
            directions=self.directions if "boundary" in reads else 0,
            steps=self.steps,
            max_distance=self.max_distance,
            perturbations=self.perturbations if "perturbation" in reads else 0,
            perturb_mode=self.perturb_mode,
            perturb_features=self.perturb_features,
            boundary_method=self.boundary,
            boundary_queries=self.boundary_queries,
            augmentations=query_augmentations(self.augment_flip, self.augment_shift, self.augment_stride)
            if augmented
            else (),
        )


def _attack_reads(spec: AttackSpec) -> frozenset[str]:
    """The probes attack ``spec`` reads: an instance's (an entry's bound parameters may add to its class's,
    e.g. lira-augmented reads "augmented"); its parameters were checked where the spec was read
    (``AttackSpec._in_range``, which names the attack's place in the config)."""
    return frozenset(ATTACKS.create(spec.name, run_seed=0, **spec.params).reads)


class ShadowDataConfig(_Strict):
    """Where the outsider's shadow (reference) training data comes from (Shokri et al. 2017): its population
    records, noisy copies of them, records drawn from their per-feature marginals, or records synthesized
    by hill-climbing the target's black-box API (every query counted). ``fedmia.threats.shadow_data``."""

    source: Literal["population", "noisy", "marginal", "synthesis"] = "population"
    n: StrictInt | None = Field(None, ge=1, description="records (default: as many as the population)")
    noise: StrictFloat = Field(0.1, ge=0, le=1, description="noisy: fraction of features re-drawn")
    label_by: Literal["class", "target"] = Field("class", description="marginal: labels drawn per class, or queried")
    k_max: StrictInt | None = Field(None, ge=1, description="synthesis: features changed at first (default d/2)")
    k_min: StrictInt = Field(1, ge=1, description="synthesis: fewest features changed")
    conf_min: StrictFloat = Field(0.2, gt=0, lt=1, description="synthesis: confidence a record must reach")
    rej_max: StrictInt = Field(10, ge=1, description="synthesis: rejections before k halves")
    iter_max: StrictInt = Field(200, ge=1, description="synthesis: proposals per try")
    max_tries: StrictInt = Field(10, ge=1, description="synthesis: restarts per record")
    real_values: Literal["marginal", "uniform"] = Field(
        "marginal", description="synthesis: how real features are drawn"
    )

    def params(self) -> dict[str, Any]:
        return self.model_dump(exclude={"source"})


class AuditConfig(_Strict):
    references: StrictInt = Field(16, ge=0, le=1024, description="reference/shadow models the attacker trains")
    attacks: tuple[AttackSpec, ...] = ()
    federated_attacks: tuple[AttackSpec, ...] = Field(
        default_factory=lambda: tuple(
            AttackSpec(name=n)
            for n in (
                "loss-trajectory",
                "loss-drop",
                "fedmia",
                "fedmia-cosine",
                "grad-cosine",
                "grad-difference",
                "grad-norm",
            )
        ),
        description="attacks on multi-round views, run by the server and client parties",
    )
    targets: StrictInt = Field(
        1,
        ge=1,
        le=1024,
        description="targets per party (LiRA's evaluation), scores pooled into one ROC: an outsider attacks the "
        "run's target plus targets-1 of its references, each in turn with the other references; the server and "
        "the client attack the run's federation plus targets-1 federations of the same spec with their own "
        "memberships (trained in process)",
    )
    server_references: StrictInt = Field(8, ge=0, le=1024, description="references the server trains per global model")
    attacked_clients: StrictInt | None = Field(None, ge=1, description="clients the server attacks (default: all)")
    observer_client: StrictInt = Field(0, ge=0, description="partition id of the passive client party")
    gradients: StrictBool = Field(True, description="record per-record gradient alignment with each update")
    active_client: ActiveClientConfig = ActiveClientConfig()
    batched: StrictBool = Field(True, description="train reference models together (vmap); DP recipes fall back")
    reference_group: StrictInt = Field(
        BATCH_GROUP,
        ge=1,
        le=1024,
        description="reference models trained together in one batched group (reference federations: sampled "
        "clients per group); with ray.address each group is one Ray task",
    )
    white_box: StrictBool = Field(
        False, description="the outsider also holds the final weights: per-record gradient norms (grad-norm)"
    )
    probes: ProbesConfig = ProbesConfig()
    shadow_data: ShadowDataConfig = ShadowDataConfig()
    reference_design: Literal["paired", "shadow"] = Field(
        "paired",
        description="the outsider's references: LiRA's paired design over the candidates, or Shokri's shadow "
        "design (shadow data only, candidates never IN)",
    )
    query_budget: StrictInt | None = Field(
        None,
        ge=0,
        description="model queries a querying party may make per attack: an attack relying on more is skipped",
    )
    query_log: StrictBool = Field(False, description="write queries.parquet (every query call, per record)")
    monitor: StrictBool = Field(
        False,
        description="run the query-stream monitor (also on with query_log): its precision/recall against "
        "benign test-set traffic",
    )
    reference_recipe: Literal["matched", "centralized"] = Field(
        "matched",
        description="how the outsider of a federated target trains its references: as federations of the "
        "same recipe (matched), or centrally (the ablation)",
    )

    @field_validator("attacks", "federated_attacks", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        return _bare_names(v)

    @model_validator(mode="after")
    def _unique(self) -> AuditConfig:
        for field_name in ("attacks", "federated_attacks"):
            dup = _twice([a.name for a in getattr(self, field_name)])
            if dup:
                raise ValueError(f"{field_name} lists {', '.join(dup)} twice")
        return self


class NamedParams(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class CentralDPConfig(_Strict):
    """Flower's DP wrappers: clipping on the server or on the clients, fixed or adaptive norm."""

    clipping: str = Field("server-fixed", description="a registered clipping mode (fedmia list)")
    noise_multiplier: StrictFloat = Field(1.0, gt=0)
    clipping_norm: StrictFloat = Field(1.0, gt=0, description="initial norm for the adaptive variants")
    delta: StrictFloat = Field(1e-5, gt=0, lt=1)

    @field_validator("clipping")
    @classmethod
    def _known_clipping(cls, v: str) -> str:
        _known_name(CLIPPING, v)
        return v

    def mode(self) -> ClippingMode:
        return CLIPPING.create(self.clipping)


class ClientResources(_Strict):
    num_cpus: StrictFloat = Field(1.0, gt=0)
    num_gpus: StrictFloat = Field(0.0, ge=0)


class FaultsConfig(_Strict):
    """Injected faults: each sampled client crashes, or hangs past the round timeout, with these
    probabilities per round (a function of seed, client and round)."""

    crash_probability: StrictFloat = Field(0.0, ge=0, le=1)
    hang_probability: StrictFloat = Field(0.0, ge=0, le=1)
    hang_seconds: StrictFloat = Field(0.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _total(self) -> FaultsConfig:
        if self.crash_probability + self.hang_probability > 1:
            raise ValueError("crash_probability + hang_probability must be at most 1")
        return self


class FederationConfig(_Strict):
    num_clients: StrictInt = Field(10, ge=1)
    rounds: StrictInt = Field(10, ge=1)
    fraction: StrictFloat = Field(1.0, gt=0, le=1, description="fraction of clients sampled per round")
    local_epochs: StrictInt = Field(3, ge=1)
    lr: StrictFloat | None = Field(None, gt=0, description="client learning rate (default: train.lr)")
    strategy: NamedParams = NamedParams(name="fedavg")
    partition: NamedParams = NamedParams(name="iid")
    secure_aggregation: StrictBool = False
    local_dp: DPConfig | None = None
    central_dp: CentralDPConfig | None = None
    client_resources: ClientResources = ClientResources()
    round_timeout: StrictFloat = Field(600.0, gt=0)
    min_replies: StrictInt = Field(1, ge=1, description="successful replies needed to aggregate a round")
    faults: FaultsConfig = FaultsConfig()
    backend: Literal["ray", "inprocess"] = Field(
        "ray",
        description="ray: Flower's simulation engine, one Ray actor per client process (the default, what "
        "`flwr run` and a cluster see); inprocess: the same ServerApp and ClientApp with messages handed "
        "over by function call in this process (no Ray start-up; no injected faults, no client_resources)",
    )

    @field_validator("strategy", "partition", mode="before")
    @classmethod
    def _bare_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: NamedParams) -> NamedParams:
        _known_name(STRATEGIES, v.name)
        _checked_params(STRATEGIES, v.name, v.params)
        return v

    @field_validator("partition")
    @classmethod
    def _known_partition(cls, v: NamedParams) -> NamedParams:
        _known_name(PARTITIONERS, v.name)
        _checked_params(PARTITIONERS, v.name, v.params)
        alpha = v.params.get("alpha")
        if alpha is not None and not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        return v

    @model_validator(mode="after")
    def _dp(self) -> FederationConfig:
        if self.min_replies > self.sampled_per_round():
            raise ValueError(
                f"min_replies={self.min_replies} exceeds the {self.sampled_per_round()} clients sampled per round"
            )
        if self.backend == "inprocess" and (self.faults.crash_probability > 0 or self.faults.hang_probability > 0):
            raise ValueError(
                "federation.faults are injected into Ray actors: use federation.backend=ray to inject them"
            )
        if self.faults.hang_probability > 0 and self.faults.hang_seconds <= self.round_timeout:
            raise ValueError("faults.hang_seconds must exceed round_timeout, or a hang is just a slow reply")
        cdp = self.central_dp
        if cdp is not None and cdp.mode().adaptive and cdp.noise_multiplier >= self.sampled_per_round() / 10:
            # Flower splits the noise between the update and the clipped-count estimate, whose std is
            # sampled/20 by default: the noise multiplier must stay below twice that
            raise ValueError(
                f"central_dp.noise_multiplier={cdp.noise_multiplier:g} is too large for adaptive clipping with "
                f"{self.sampled_per_round()} clients a round: it must be below {self.sampled_per_round() / 10:g} "
                "(sample more clients or lower the noise)"
            )
        if self.local_dp is not None and self.central_dp is not None:
            raise ValueError("choose local_dp or central_dp, not both")
        if self.secure_aggregation and cdp is not None and cdp.mode().side == "server":
            raise ValueError("server-side clipping needs the individual updates, which secure aggregation hides")
        mu = client_recipe_changes(self.strategy.name, self.strategy.params).get("proximal_mu", 0.0)
        if self.local_dp is not None and mu > 0:
            raise ValueError(
                f"strategy {self.strategy.name!r} with proximal_mu={mu:g} has no effect under local_dp: Opacus "
                "replaces each step's gradient with clipped per-record gradients plus noise, so the proximal "
                "term's gradient is dropped; use fedavg with local_dp, or central_dp"
            )
        return self

    def sampled_per_round(self) -> int:
        return max(1, int(self.num_clients * self.fraction))


class RayReferenceTasksConfig(_Strict):
    """What each reference task reserves on a cluster (``ray.address``): one batched group per task."""

    num_cpus: StrictFloat = Field(
        1.0, gt=0, description="CPUs one reference task reserves; its torch uses that many threads (at least 1)"
    )


class RayConfig(_Strict):
    address: str | None = Field(None, description="HOST:PORT or 'auto' of an existing Ray cluster")
    reference_tasks: RayReferenceTasksConfig = Field(
        RayReferenceTasksConfig(),
        description="with address: reference models and federations train as Ray tasks, "
        "audit.reference_group references per task",
    )


class SweepConfig(_Strict):
    """``fedmia sweep``'s grid: config keys (dotted, as overrides) and the values each takes; the sweep
    runs every combination. ``fedmia run`` ignores it; ``--grid`` on the command line adds or replaces keys."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("grid")
    @classmethod
    def _nonempty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"sweep.grid.{key} lists no values")
            if key.split(".")[0] == "sweep":
                raise ValueError("sweep.grid cannot sweep the sweep section itself")
        return v


class GenerativeConfig(_Strict):
    """The generative settings (``generative-centralized``, ``generative-federated``)."""

    samples: StrictInt = Field(
        1000, ge=2, le=1_000_000, description="records the generator releases (what the samples-only outsider gets)"
    )
    reference: StrictBool = Field(
        True, description="the parties train a reference generator on their population, the way the target was"
    )
    attacks: tuple[GenerativeAttackSpec, ...] = Field(
        default_factory=lambda: tuple(
            GenerativeAttackSpec(name=n)
            for n in ("dcr", "dcr-diff", "domias", "gan-leaks", "gan-leaks-cal", "monte-carlo", "logan", "elbo")
        ),
        description="attacks on generators each party runs (fedmia list); those it lacks the knowledge for are skipped",
    )

    @field_validator("attacks", mode="before")
    @classmethod
    def _bare_attack_names(cls, v: Any) -> Any:
        return _bare_names(v)

    @field_validator("attacks")
    @classmethod
    def _once(cls, v: tuple[GenerativeAttackSpec, ...]) -> tuple[GenerativeAttackSpec, ...]:
        dup = _twice([a.name for a in v])
        if dup:
            raise ValueError(f"generative.attacks lists {', '.join(dup)} twice")
        return v


class ExperimentConfig(_Strict):
    name: str = Field("experiment", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: StrictInt = Field(0, ge=0)
    seeds: tuple[Annotated[StrictInt, Field(ge=0)], ...] = Field(
        (),
        description="run the config once per seed (fedmia run; --seeds N is seed, seed+1, ...) and aggregate "
        "the runs with intervals across seeds; empty: one run with `seed`",
    )
    settings: tuple[str, ...] = Field(("centralized",), min_length=1, description="registered settings (fedmia list)")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    audit: AuditConfig = AuditConfig()
    federation: FederationConfig = FederationConfig()
    ray: RayConfig = RayConfig()
    out_dir: str = "runs"
    defenses: tuple[DefenseSpec, ...] = Field(
        (),
        description="training-time defenses (the target, every FL client and the attacker's references train "
        "with them) and query-time defenses (layers of the released model's interface, in order)",
    )
    sweep: SweepConfig = SweepConfig()
    generative: GenerativeConfig = GenerativeConfig()

    @model_validator(mode="before")
    @classmethod
    def _image_default_model(cls, tree: Any) -> Any:
        """A config that names no model gets the GroupNorm CNN for image datasets (CIFAR-10/100, FEMNIST,
        hf-disk with an image column), ModelConfig's default (the MLP) otherwise."""
        if not isinstance(tree, dict):
            return tree
        data, model = tree.get("data"), tree.get("model")
        if not isinstance(data, dict) or not (model is None or (isinstance(model, dict) and "name" not in model)):
            return tree
        name, params = data.get("dataset"), data.get("params")
        if not isinstance(name, str) or name not in DATASETS:
            return tree
        if dataset_traits(name).is_image(params if isinstance(params, dict) else {}):
            return {**tree, "model": {**(model or {}), "name": "cnn"}}
        return tree

    @model_validator(mode="after")
    def _augment_images(self) -> ExperimentConfig:
        """Crops and flips move pixels: train.augment and augmented queries need an image dataset."""
        image = dataset_traits(self.data.dataset).is_image(self.data.params)
        if self.train.augment and not image:
            raise ValueError(
                f"train.augment {list(self.train.augment)} needs image records, but dataset "
                f"{self.data.dataset!r} is not an image dataset; set train.augment=[] (none)"
            )
        probes = self.query_interface().probes
        if probes is not None and probes.augmentations and not image:
            raise ValueError(
                f"audit.attacks: LiRA's augmented queries (flips x shifts) need image records, but dataset "
                f"{self.data.dataset!r} is not an image dataset; use lira-online / lira-offline instead"
            )
        return self

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must differ, got {list(v)}")
        return v

    @field_validator("settings")
    @classmethod
    def _known_settings(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            _known_name(SETTINGS, name)
        dup = _twice(v)
        if dup:
            raise ValueError(f"settings lists {', '.join(dup)} twice; each setting runs once")
        return v

    @field_validator("defenses", mode="before")
    @classmethod
    def _bare_defense_names(cls, v: Any) -> Any:
        return _bare_names(v)

    @model_validator(mode="after")
    def _defenses_fit(self) -> ExperimentConfig:
        dup = _twice([d.name for d in self.defenses])
        if dup:
            raise ValueError(f"defenses lists {', '.join(dup)} twice")
        takes = {p.name for p in MODELS.params(self.model.name)}
        for spec in self.defenses:
            defense = spec.create()
            missing = sorted(set(defense.model) - takes)
            if missing:
                raise ValueError(
                    f"defense {spec.name!r} sets model parameter {', '.join(missing)}, which model "
                    f"{self.model.name!r} does not take (its parameters: {', '.join(sorted(takes)) or 'none'})"
                )
            given = sorted(k for k in defense.model if k in self.model.params)
            if given:
                raise ValueError(f"defense {spec.name!r} and model.params both set {', '.join(given)}; set it once")
            if "weight_decay" in defense.recipe and self.train.weight_decay > 0:
                raise ValueError(f"defense {spec.name!r} and train.weight_decay both set the L2 penalty; set it once")
        try:  # defenses that change the same recipe field, or that DP-SGD cannot run with; layer order
            self.query_interface()
            recipe = apply_recipe(self.train.recipe(), self.defense_objects())
            family = model_family(self.model.name)
            check_recipe(recipe, family)
            if self.uses_federation() and self.federation.local_dp is not None:
                check_recipe(dataclasses.replace(recipe, dp=self.federation.local_dp.spec()), family)
        except ValueError as exc:
            raise ValueError(f"defenses: {exc}") from None
        return self

    def defense_objects(self) -> list[Defense]:
        return [d.create() for d in self.defenses]

    def query_interface(self) -> QueryInterface:
        """What a black-box party receives from the released model: the query-time defenses in order,
        and the label-only probes when an attack reads them."""
        layers = tuple(d.output for d in self.defense_objects() if d.output is not None)
        reads: frozenset[str] = frozenset().union(*(_attack_reads(a) for a in self.audit.attacks))
        return QueryInterface(layers=layers, probes=self.audit.probes.probes(reads))

    @model_validator(mode="after")
    def _model_fits_settings(self) -> ExperimentConfig:
        """A generative setting trains a generator (model family vae/gan); every other setting a classifier."""
        family = model_family(self.model.name)
        for name in self.settings:
            wants = setting_traits(name).generative
            if wants != (family != "classifier"):
                need = "a generator (vae, gan)" if wants else "a classifier"
                raise ValueError(f"setting {name!r} needs {need}; model.name={self.model.name!r} is a {family}")
        return self

    @model_validator(mode="after")
    def _targets(self) -> ExperimentConfig:
        """A classifier setting's outsider promotes targets-1 of its paired references to targets; the
        generative settings and the parties inside a federation train their further targets instead."""
        audit = self.audit
        if audit.targets == 1 or all(setting_traits(s).generative for s in self.settings):
            return self
        if audit.reference_design != "paired":
            raise ValueError(
                "audit.targets > 1 needs audit.reference_design: paired (shadow references never train on a "
                "candidate, so none can be promoted to a target)"
            )
        if audit.targets > audit.references:
            raise ValueError(
                f"audit.targets={audit.targets} needs at least {audit.targets} references (the run's target plus "
                f"targets-1 promoted references, each keeping at least one other), got audit.references="
                f"{audit.references}; set audit.targets=1 to attack the run's target alone"
            )
        return self

    def uses_federation(self) -> bool:
        """Whether any setting trains a federation (then the plan has client partitions)."""
        return any(setting_traits(s).federation for s in self.settings)

    def uses_ray(self) -> bool:
        """Whether the run needs a Ray runtime: a federation on the Ray backend, or a cluster (``ray.address``),
        which trains federations and references."""
        return (self.uses_federation() and self.federation.backend == "ray") or self.ray.address is not None

    @model_validator(mode="after")
    def _clients(self) -> ExperimentConfig:
        audit, n = self.audit, self.federation.num_clients
        if not self.uses_federation():
            return self
        if audit.observer_client >= n:
            raise ValueError(
                f"audit.observer_client={audit.observer_client} is not a client: partition ids are 0..{n - 1}"
            )
        if audit.attacked_clients is not None and audit.attacked_clients > n:
            raise ValueError(f"audit.attacked_clients={audit.attacked_clients} exceeds federation.num_clients={n}")
        return self

    @model_validator(mode="after")
    def _natural_references(self) -> ExperimentConfig:
        audit = self.audit
        if (
            self.uses_federation()
            and partition_traits(self.federation.partition.name).groups
            and audit.references > 0
            and audit.reference_recipe == "matched"
            and audit.shadow_data.source != "population"
        ):
            raise ValueError(
                f"federation.partition {self.federation.partition.name!r} partitions the outsider's reference "
                f"federations by writer, and audit.shadow_data.source={audit.shadow_data.source!r} makes up "
                "records that have none: use source=population or audit.reference_recipe=centralized"
            )
        return self

    @model_validator(mode="after")
    def _active_client(self) -> ExperimentConfig:
        active, fed = self.audit.active_client, self.federation
        if not active.enabled:
            return self
        if not self.uses_federation():
            raise ValueError("audit.active_client.enabled needs a federated setting in settings")
        if active.partition >= fed.num_clients:
            raise ValueError(
                f"audit.active_client.partition must be < federation.num_clients ({fed.num_clients}), "
                f"got {active.partition}"
            )
        r = active.round if active.round is not None else fed.rounds - 1
        if not 1 <= r < fed.rounds:
            why = " (default federation.rounds - 1; needs federation.rounds >= 2)" if active.round is None else ""
            raise ValueError(
                f"audit.active_client.round must be in 1..{fed.rounds - 1}: an honest round must follow "
                f"the ascent, got {r}{why}"
            )
        return self

    def active_round(self) -> int:
        """The round of the active client's ascent (config default resolved)."""
        r = self.audit.active_client.round
        return r if r is not None else self.federation.rounds - 1


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = _yaml(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
        out.append((key, value))
    return out


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {loc}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def config_from_dict(tree: Any) -> ExperimentConfig:
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(tree).__name__}")
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format(exc)) from None


def read_tree(path: str | Path | None) -> dict[str, Any]:
    """The YAML mapping in ``path`` (an empty one for None), unvalidated. ``path`` is a file, or the bare name
    of a packaged config when no such file exists (``compare``: ``fedmia/configs/compare.yaml``)."""
    if path is None:
        return {}
    try:  # an existing path, else the packaged config of that bare name (fedmia.experiment.configfiles)
        p = resolve_config(path).path
    except ConfigFileError as exc:
        raise ConfigError(str(exc)) from None
    try:
        tree = _yaml(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    except OSError as exc:  # a file that exists but cannot be read (permissions, /proc/self/mem's EIO)
        raise ConfigError(f"cannot read the config file {p}: {exc.strerror or exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: config must be a mapping of sections")
    return tree


def with_values(tree: dict[str, Any], values: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """A deep copy of ``tree`` with each dotted key set to its (already parsed) value."""
    out = copy.deepcopy(tree)
    for key, value in values:
        _set_path(out, key, copy.deepcopy(value))
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read YAML (or start from defaults), apply ``key=value`` overrides, validate once."""
    return config_from_dict(with_values(read_tree(path), parse_overrides(overrides or [])))


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
