"""The one ``train()`` for every model fedmia trains, the attacker's reference models, and the
training-time defenses (options of ``train()``) by name."""

from fedmia.training.defenses import DEFENSES, Defense, apply_recipe, model_params
from fedmia.training.references import ModelSpec, Records, train_reference_signals
from fedmia.training.train import (
    AdversarialRegularization,
    DPSpec,
    EarlyStopping,
    Recipe,
    TrainResult,
    WeightedSmoothing,
    clone_model,
    train,
)

__all__ = [
    "DEFENSES",
    "AdversarialRegularization",
    "DPSpec",
    "Defense",
    "EarlyStopping",
    "ModelSpec",
    "Recipe",
    "Records",
    "TrainResult",
    "WeightedSmoothing",
    "apply_recipe",
    "clone_model",
    "model_params",
    "train",
    "train_reference_signals",
]
