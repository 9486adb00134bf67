"""The one ``train()`` for every model fedmia trains, and the attacker's reference models."""

from fedmia.training.references import ModelSpec, Records, train_reference_signals
from fedmia.training.train import DPSpec, Recipe, TrainResult, clone_model, train

__all__ = [
    "DPSpec",
    "ModelSpec",
    "Recipe",
    "Records",
    "TrainResult",
    "clone_model",
    "train",
    "train_reference_signals",
]
