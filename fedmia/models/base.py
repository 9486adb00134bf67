"""The model registry and what it knows about each entry (its family), below every model module."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedmia.registry import Registry

MODELS: Registry[nn.Module] = Registry("model", exclude=("input_shape", "num_classes"))


@dataclass(frozen=True)
class ModelTraits:
    """What the rest of the code needs to know about a model entry: its ``family`` picks its training
    objective (``fedmia.training.objectives``): "classifier" (the default), "vae" or "gan"."""

    family: str = "classifier"


def model_family(name: str) -> str:
    """The family of the registered model ``name`` (entries without traits are classifiers)."""
    traits = MODELS.traits(name)
    return traits.family if isinstance(traits, ModelTraits) else "classifier"


def family_of(model: nn.Module) -> str:
    """The family of a built model: its class attribute ``family``, else "classifier"."""
    return str(getattr(model, "family", "classifier"))
