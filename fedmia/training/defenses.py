"""Membership-inference defenses by name, with typed parameters.

A ``Defense`` says what it changes: the training recipe (``Recipe`` fields, so targets, references,
shadows and every FL client get it through the one ``train()``), the model's parameters (dropout), or the
party's query interface (a query-time output layer of ``fedmia.signals.release``, applied to what every
black-box party receives, its own references included). Each factory checks its parameters' ranges and
names the one out of range.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedmia.errors import InputError
from fedmia.registry import Registry
from fedmia.signals.release import LabelOnly, OutputLayer, OutputNoise, Rounding, Temperature, TopK
from fedmia.training.train import AdversarialRegularization, EarlyStopping, Recipe, WeightedSmoothing


@dataclass(frozen=True)
class Defense:
    """What one defense changes: the training recipe (Recipe fields), the model's parameters, or the query interface."""

    recipe: Mapping[str, Any] = field(default_factory=dict)  # Recipe field name -> value
    model: Mapping[str, Any] = field(default_factory=dict)  # model parameter -> value (dropout)
    output: OutputLayer | None = None  # a query-time layer of the released model's interface

    @property
    def stage(self) -> str:
        return "query" if self.output is not None else "training"


DEFENSES: Registry[Defense] = Registry("defense")


def _check(name: str, value: float, low: float, high: float, *, low_open: bool = False, high_open: bool = True) -> None:
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise InputError(f"defense parameter {name} must be in {lo}{low}, {high}{hi}, got {value}")


@DEFENSES.register("l2", description="L2 regularization: the optimizer's weight decay (Krogh & Hertz 1991)")
def l2(weight_decay: float = 1e-3) -> Defense:
    _check("weight_decay", weight_decay, 0.0, float("inf"), low_open=True)
    return Defense(recipe={"weight_decay": weight_decay})


@DEFENSES.register("dropout", description="Dropout after every hidden activation (Srivastava et al. 2014)")
def dropout(p: float = 0.5) -> Defense:
    _check("p", p, 0.0, 1.0, low_open=True)
    return Defense(model={"dropout": p})


@DEFENSES.register(
    "early-stopping", description="Stop when the loss on a held-out share of the trainer's records stops improving"
)
def early_stopping(validation: float = 0.2, patience: int = 3) -> Defense:
    _check("validation", validation, 0.0, 1.0, low_open=True)
    _check("patience", patience, 1, float("inf"))
    return Defense(recipe={"early_stopping": EarlyStopping(validation=validation, patience=patience)})


@DEFENSES.register("label-smoothing", description="Label smoothing of the cross-entropy target (Szegedy et al. 2016)")
def label_smoothing(epsilon: float = 0.1) -> Defense:
    _check("epsilon", epsilon, 0.0, 1.0, low_open=True)
    return Defense(recipe={"label_smoothing": epsilon})


@DEFENSES.register(
    "adversarial-regularization",
    description="Min-max training against an inference model on a reference set (Nasr, Shokri & Houmansadr 2018)",
)
def adversarial_regularization(
    strength: float = 1.0, reference_fraction: float = 0.2, inference_steps: int = 1, inference_lr: float = 1e-3
) -> Defense:
    _check("strength", strength, 0.0, float("inf"), low_open=True)
    _check("reference_fraction", reference_fraction, 0.0, 1.0, low_open=True)
    _check("inference_steps", inference_steps, 1, float("inf"))
    _check("inference_lr", inference_lr, 0.0, float("inf"), low_open=True)
    spec = AdversarialRegularization(
        strength=strength,
        reference_fraction=reference_fraction,
        inference_steps=inference_steps,
        inference_lr=inference_lr,
    )
    return Defense(recipe={"adversarial": spec})


@DEFENSES.register(
    "weighted-smoothing",
    description="Noise on confidently fitted records' predictions in the loss (Tan, Xie, Sun & Wang 2023)",
)
def weighted_smoothing(noise_std: float = 0.03, warmup_epochs: int = 4, max_grad_norm: float = 10.0) -> Defense:
    _check("noise_std", noise_std, 0.0, float("inf"), low_open=True)
    _check("warmup_epochs", warmup_epochs, 0, float("inf"))
    _check("max_grad_norm", max_grad_norm, 0.0, float("inf"), low_open=True)
    spec = WeightedSmoothing(noise_std=noise_std, warmup_epochs=warmup_epochs, max_grad_norm=max_grad_norm)
    return Defense(recipe={"weighted_smoothing": spec})


# --- query-time: layers of the released model's query interface ---------------------------------------


@DEFENSES.register("top-k", description="Release only the k largest probabilities (Shokri et al. 2017)")
def top_k(k: int = 3) -> Defense:
    return Defense(output=TopK(k))


@DEFENSES.register("rounding", description="Round released probabilities to d decimals (Shokri et al. 2017)")
def rounding(decimals: int = 2) -> Defense:
    return Defense(output=Rounding(decimals))


@DEFENSES.register("temperature", description="Release softmax(z / T): T > 1 flattens, the label is unchanged")
def temperature(t: float = 5.0) -> Defense:
    return Defense(output=Temperature(t))


@DEFENSES.register("output-noise", description="Gaussian or Laplace noise on the released probabilities, renormalised")
def output_noise(scale: float = 0.05, kind: str = "gaussian") -> Defense:
    return Defense(output=OutputNoise(kind=kind, scale=scale))


@DEFENSES.register("label-only", description="Release the top label only (must be the last query-time defense)")
def label_only() -> Defense:
    return Defense(output=LabelOnly())


def _merged(kind: str, changes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for change in changes:
        for key, value in change.items():
            if key in out:
                raise InputError(f"two defenses set the same {kind} {key!r}")
            out[key] = value
    return out


def apply_recipe(recipe: Recipe, defenses: Sequence[Defense]) -> Recipe:
    """``recipe`` with every defense's recipe changes; two defenses setting one field is a ValueError."""
    return dataclasses.replace(recipe, **_merged("Recipe field", [d.recipe for d in defenses]))


def model_params(params: Mapping[str, Any], defenses: Sequence[Defense]) -> dict[str, Any]:
    """The model's parameters with every defense's model changes (e.g. dropout) on top."""
    return {**params, **_merged("model parameter", [d.model for d in defenses])}
