"""Single-model metric attacks: each scores a record by one function of the target's output."""

from __future__ import annotations

import numpy as np

from fedmia.attacks.base import ATTACKS, Attack, Knowledge
from fedmia.signals import Signals

_EPS = 1e-30


@ATTACKS.register("loss")
class LossAttack(Attack):
    """Yeom et al. 2018: members have lower loss. Score = -loss."""

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        return -target.loss


@ATTACKS.register("confidence")
class ConfidenceAttack(Attack):
    """Confidence in the true class, p_y (Salem et al. 2019 / Song & Mittal 2021)."""

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        return target.true_prob


@ATTACKS.register("entropy")
class EntropyAttack(Attack):
    """Prediction entropy (Song & Mittal 2021): members get sharper predictions. Score = -H(p)."""

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        p = target.probs
        return np.sum(p * np.log(np.clip(p, _EPS, None)), axis=-1)


@ATTACKS.register("modified-entropy")
class ModifiedEntropyAttack(Attack):
    """Song & Mittal 2021's label-aware entropy; score = -Mentr.

    Mentr = -(1 - p_y) log p_y - sum_{y' != y} p_y' log(1 - p_y').
    """

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        p = target.probs
        py = target.true_prob
        log_1m = np.log(np.clip(1.0 - p, _EPS, None))
        onehot = np.eye(p.shape[-1], dtype=bool)[target.labels]  # broadcasts over a leading model axis
        others = np.where(onehot, 0.0, p * log_1m).sum(axis=-1)
        mentr = -(1.0 - py) * np.log(np.clip(py, _EPS, None)) - others
        return -mentr
