"""The settings registry: how the target is trained (centrally, by federated learning, ...).

A setting is a function of the run's ``Context`` that trains its target and lets its parties attack;
its traits say what the rest of the run must prepare for it. Adding a setting: write its module
(register it here with ``@SETTINGS.register``) and import that module in ``experiment/settings.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedmia.registry import Registry

if TYPE_CHECKING:
    from fedmia.experiment.context import Context


@dataclass(frozen=True)
class SettingTraits:
    federation: bool = False  # trains over client partitions on Flower + Ray: the plan gets clients, Ray starts
    generative: bool = False  # its model is a generator (model family vae/gan), not a classifier


SETTINGS: Registry[None] = Registry("setting", exclude=("ctx",))
SettingRun = Callable[["Context"], None]


def traits(name: str) -> SettingTraits:
    return SETTINGS.traits(name) or SettingTraits()
