"""The active client's score (Nasr et al. 2019): how far a record's loss fell in the honest round
after the attacker pushed it up. Owners pull their members' loss back down; nobody owns a
non-member, so its loss falls only through generalization."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedmia.attacks.base import ATTACKS, Attack, Knowledge, MissingKnowledgeError
from fedmia.signals import Signals


@ATTACKS.register("active-ascent")
class AscentLossDrop(Attack):
    """Score = loss under the first observed global model - loss under the last (higher = member).

    ``knowledge.rounds.loss`` is (2, n) for the active client: [global model that carries its
    ascent, global model after the next honest round].
    """

    needs: ClassVar[frozenset[str]] = frozenset({"rounds"})

    def check(self, knowledge: Knowledge) -> None:
        super().check(knowledge)
        loss = knowledge.rounds.loss if knowledge.rounds is not None else None
        if loss is None or np.ndim(loss) != 2 or np.shape(loss)[0] < 2:
            raise MissingKnowledgeError("AscentLossDrop needs per-record loss under two global models (2, n)")

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        self.check(knowledge)
        assert knowledge.rounds is not None and knowledge.rounds.loss is not None
        loss = np.asarray(knowledge.rounds.loss, dtype=np.float64)
        return loss[0] - loss[-1]
