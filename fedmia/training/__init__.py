"""The one ``train()`` for every model fedmia trains."""

from fedmia.training.train import DPSpec, Recipe, TrainResult, clone_model, train

__all__ = ["DPSpec", "Recipe", "TrainResult", "clone_model", "train"]
