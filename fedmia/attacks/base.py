"""The attack interface: an attack scores target records from signals and what the party knows.

Attacks never see membership ground truth of the target records. A party may know the
membership of models it trained itself (``keep``), which is all ``Knowledge`` carries.
Every attack returns scores where higher means "more likely a member".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from fedmia.registry import Registry
from fedmia.signals import Signals


@dataclass(frozen=True)
class RoundSignals:
    """Per-record signals of observed models over rounds: arrays (R, n), or (R, C, n) for several
    models per round (e.g. the other clients' local models). NaN where a model was not observed.

    In ``Knowledge.rounds`` (the attacked model, (R, n)) round r of every field belongs to the same
    round; ``global_loss`` and ``grad_norm`` describe the global model that round started from.
    """

    loss: np.ndarray | None = None  # cross-entropy of the true label
    grad_cosine: np.ndarray | None = None  # cos(gradient of the record, the client's descent step)
    grad_difference: np.ndarray | None = None  # ||step|| - ||step - gradient of the record||
    logit_conf: np.ndarray | None = None  # log p_y - log(1 - p_y) (LiRA's logit scaling), as Signals.logit_conf
    global_loss: np.ndarray | None = None  # (R, n): loss under the global model the round started from
    grad_norm: np.ndarray | None = None  # (R, n): ||gradient of the record's loss at that global model||


@dataclass(frozen=True)
class Knowledge:
    """What the attacking party legitimately holds besides the target's signals."""

    references: Signals | None = None  # K reference models on the target records: arrays (K, n, ...)
    keep: np.ndarray | None = None  # (K, n) bool: which target records each reference trained on
    population: Signals | None = None  # the target model on the party's own population records (m,)
    ref_population: Signals | None = None  # the K reference models on the population records (K, m)
    keep_population: np.ndarray | None = None  # (K, m) bool: population records each reference trained on
    rounds: RoundSignals | None = None  # the attacked model over rounds (a client's local models, or the globals)
    others: RoundSignals | None = None  # other clients' local models over rounds: (R, C-1, n)
    # The records' own features, flattened: the party owns its candidates and its population records
    # (attacks that model a record's difficulty from its content, e.g. quantile regression, read them).
    candidate_features: np.ndarray | None = None  # (n, d): the candidates the target signals are about
    population_features: np.ndarray | None = None  # (m, d): the population records, in population order

    def available(self) -> frozenset[str]:
        return frozenset(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def on_candidates(self, idx: np.ndarray) -> Knowledge:
        """The same knowledge about candidates ``idx`` only (references, keep and candidate features
        restricted; the population side, which is not about candidates, unchanged; per-round views dropped)."""
        return Knowledge(
            references=None if self.references is None else self.references.subset(idx),
            keep=None if self.keep is None else self.keep[:, idx],
            population=self.population,
            ref_population=self.ref_population,
            keep_population=self.keep_population,
            candidate_features=None if self.candidate_features is None else self.candidate_features[idx],
            population_features=self.population_features,
        )


class MissingKnowledgeError(ValueError):
    """An attack needs knowledge that the party does not have."""


class Attack(ABC):
    """Scores target records; higher = more likely member."""

    needs: ClassVar[frozenset[str]] = frozenset()
    # What the query interface must release for this attack: "probs" (probability vectors) or "label"
    # (the top label suffices: such an attack runs on every interface).
    output: ClassVar[str] = "probs"
    # Optional Signals fields (the label-only probes) the attack reads from the target.
    reads: ClassVar[frozenset[str]] = frozenset()

    def check(self, knowledge: Knowledge) -> None:
        missing = self.needs - knowledge.available()
        if missing:
            raise MissingKnowledgeError(f"{type(self).__name__} needs {sorted(missing)}, which the party lacks")

    def check_target(self, target: Signals) -> None:
        """Raise ``MissingKnowledgeError`` when the target's signals lack what this attack reads."""
        name = type(self).__name__
        if self.output == "probs" and target.output != "probs":
            raise MissingKnowledgeError(
                f"{name} needs probability outputs; the query interface returns {target.output}s only"
            )
        for field in sorted(self.reads):
            if getattr(target, field, None) is None:
                raise MissingKnowledgeError(f"{name} needs the {field} probe, which this party did not run")

    @abstractmethod
    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        """Membership scores (n,) for the records of ``target``."""

    def info(self) -> dict[str, Any]:
        """What the last ``score`` chose from the party's knowledge (e.g. RMIA's tuned ``a``), JSON-ready; the
        results row carries it as ``info`` (``AttackOutcome.info``). Empty for most attacks."""
        return {}


ATTACKS: Registry[Attack] = Registry("attack")
