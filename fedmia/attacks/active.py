"""The active client's score (Nasr et al. 2019): how far below its pre-attack level a record's loss
fell in the honest round after the attacker pushed it up. Owners pull their members' loss back down;
nobody owns a non-member, so its loss falls only through generalization."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedmia.attacks.base import ATTACKS, Attack, Knowledge, MissingKnowledgeError
from fedmia.signals import Signals


@ATTACKS.register("active-ascent")
class AscentLossDrop(Attack):
    """Score = loss under the first observed global model - loss under the last (higher = member).

    ``knowledge.rounds.loss`` is (3, n) for the active client (``fedmia.threats.active``): the global
    model it received in its ascent round r (before its ascent), the global model of round r + 1 (which
    carries the ascent), and the global model after the honest round r + 1. The score is

        s(x) = L(x; theta_r) - L(x; theta_{r+2}),

    how far below its level before the attack the federation pulled the record's loss. After the ascent
    (Nasr, Shokri and Houmansadr, IEEE S&P 2019, Sec. "Active attacks": "If the target record x is in the
    training set of a participant, its local SGD algorithm abruptly reduces the gradient of the loss on
    x") a member's owner fits it again, down to where it was or lower, while a non-member keeps part of
    the push. The paper feeds the observed epochs to a trained inference model; this is its unsupervised
    reduction. We subtract the loss before the push rather than the pushed loss L(x; theta_{r+1}): the
    pushed-minus-after drop grows with the push itself, which differs per record (ill-fit records,
    mostly non-members, are pushed higher), and that difference swamps the owners' pull-down.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"rounds"})

    def check(self, knowledge: Knowledge) -> None:
        super().check(knowledge)
        loss = knowledge.rounds.loss if knowledge.rounds is not None else None
        if loss is None or np.ndim(loss) != 2 or np.shape(loss)[0] < 2:
            raise MissingKnowledgeError("AscentLossDrop needs per-record loss under at least two global models (R, n)")

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        assert knowledge.rounds is not None and knowledge.rounds.loss is not None
        loss = np.asarray(knowledge.rounds.loss, dtype=np.float64)
        return loss[0] - loss[-1]
