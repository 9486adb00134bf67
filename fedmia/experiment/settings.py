"""Fills the settings registry by explicit imports: one line per setting module."""

from fedmia.experiment import centralized as _centralized  # noqa: F401
from fedmia.experiment import federated as _federated  # noqa: F401
from fedmia.experiment import generative as _generative  # noqa: F401
from fedmia.experiment.setting import SETTINGS, SettingTraits, traits

__all__ = ["SETTINGS", "SettingTraits", "traits"]
