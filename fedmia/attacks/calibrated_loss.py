"""Difficulty-calibrated loss: Watson, Guo, Cormode and Sablayrolles 2022, "On the Importance of Difficulty
Calibration in Membership Inference Attacks" (ICLR 2022), calibrating the loss attack (Yeom et al. 2018)
as Sablayrolles et al. 2019 ("White-box vs Black-box: Bayes Optimal Strategies for Membership
Inference", ICML) do with their per-example threshold tau(x).

Watson et al.'s calibrated score subtracts the score that reference models g, trained on the party's
own data without x, give the record: s_cal(h, x) = s(h, x) - E_g[s(g, x)]. With s = -loss:

    score(x) = -(l(x) - (1 / |OUT(x)|) sum_{k in OUT(x)} l_k(x)),

OUT(x) the references that did not train on x (``keep`` False), l_k reference k's loss. Sablayrolles et
al.'s per-example test l(x) < tau(x), with tau(x) estimated from reference models' losses on x, has the
same form thresholded at 0 (a global offset on tau is the ROC's threshold). We estimate the calibration
term from OUT references only, as Watson et al.'s references are trained without x; we did not check
whether Sablayrolles et al. average over models with x as well (that would be an online variant).

Fallback: a record no reference left OUT is calibrated by the mean OUT loss over every record (the
same rule as the label-only attacks' calibration, which this reuses).
"""

from __future__ import annotations

import numpy as np

from fedmia.attacks.base import ATTACKS, Attack, Knowledge
from fedmia.attacks.label_only import out_calibrated
from fedmia.signals import Signals


@ATTACKS.register("calibrated-loss")
class CalibratedLoss(Attack):
    """Difficulty-calibrated loss (Watson et al. 2022; Sablayrolles et al. 2019):
    score = -(loss(x) - mean over OUT references of loss_k(x))."""

    needs = frozenset({"references", "keep"})

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        return -out_calibrated(np.asarray(target.loss, dtype=np.float64), "loss", knowledge, calibrate=True)
