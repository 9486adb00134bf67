"""Attack registry. Importing this package registers every attack (explicit imports, no magic)."""

from fedmia.attacks import active as _active  # noqa: F401
from fedmia.attacks import calibrated_loss as _calibrated_loss  # noqa: F401
from fedmia.attacks import class_threshold as _class_threshold  # noqa: F401
from fedmia.attacks import enhanced as _enhanced  # noqa: F401
from fedmia.attacks import federated as _federated  # noqa: F401
from fedmia.attacks import generative as _generative  # noqa: F401
from fedmia.attacks import label_only as _label_only  # noqa: F401
from fedmia.attacks import lira as _lira  # noqa: F401
from fedmia.attacks import perturbation as _perturbation  # noqa: F401
from fedmia.attacks import quantile_regression as _quantile_regression  # noqa: F401
from fedmia.attacks import rmia as _rmia  # noqa: F401
from fedmia.attacks import shokri as _shokri  # noqa: F401
from fedmia.attacks import threshold as _threshold  # noqa: F401
from fedmia.attacks.base import ATTACKS, Attack, Knowledge, MissingKnowledgeError, RoundSignals
from fedmia.attacks.federated import RoundAttack, source_inference, source_inference_chance
from fedmia.attacks.generative import GENERATIVE_ATTACKS, GenerativeAttack, GenerativeKnowledge

__all__ = [
    "ATTACKS",
    "GENERATIVE_ATTACKS",
    "Attack",
    "GenerativeAttack",
    "GenerativeKnowledge",
    "Knowledge",
    "MissingKnowledgeError",
    "RoundAttack",
    "RoundSignals",
    "source_inference",
    "source_inference_chance",
]
