"""Attacks on federated views: functions of per-round arrays, combined over rounds.

Each attack scores every round it can (``round_scores``, (R, n) with NaN where the record's model
was not observed) and combines the rounds into one score, so the audit can also report when
leakage peaks.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from typing import ClassVar

import numpy as np
from scipy.stats import norm

from fedmia.attacks.base import ATTACKS, Attack, Knowledge, MissingKnowledgeError, RoundSignals
from fedmia.signals import Signals


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are expected: unobserved rounds
        return np.nanmean(a, axis=axis)


class RoundAttack(Attack):
    """An attack that scores each observed round and averages the rounds' scores."""

    round_fields: ClassVar[frozenset[str]] = frozenset()  # RoundSignals fields it reads (rounds/others)

    def check(self, knowledge: Knowledge) -> None:
        super().check(knowledge)
        for part in sorted(self.needs & {"rounds", "others"}):
            signals = getattr(knowledge, part)
            missing = sorted(f for f in self.round_fields if getattr(signals, f, None) is None)
            if missing:
                raise MissingKnowledgeError(
                    f"{type(self).__name__} needs per-round {missing} in {part!r}, not observed"
                )

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        per_round = self.round_scores(knowledge)
        out = _nanmean(per_round, axis=0)
        return np.where(np.isfinite(out), out, np.nanmin(out[np.isfinite(out)]) if np.isfinite(out).any() else 0.0)

    @abstractmethod
    def round_scores(self, knowledge: Knowledge) -> np.ndarray:
        """(R, n) scores, NaN for rounds where the attacked model was not observed."""


def _field(signals: RoundSignals | None, name: str) -> np.ndarray:
    value = getattr(signals, name) if signals is not None else None
    if value is None:
        raise MissingKnowledgeError(f"this view has no per-round {name}")
    return np.asarray(value, dtype=np.float64)


@ATTACKS.register("loss-trajectory")
class LossTrajectory(RoundAttack):
    """Multi-round LOSS: members keep a low loss across the rounds the party observed."""

    needs: ClassVar[frozenset[str]] = frozenset({"rounds"})
    round_fields: ClassVar[frozenset[str]] = frozenset({"loss"})

    def round_scores(self, knowledge: Knowledge) -> np.ndarray:
        return -_field(knowledge.rounds, "loss")


@ATTACKS.register("grad-cosine")
class GradientCosine(RoundAttack):
    """Li et al. 2023: cosine between the record's gradient at the global model and the client's step."""

    needs: ClassVar[frozenset[str]] = frozenset({"rounds"})
    round_fields: ClassVar[frozenset[str]] = frozenset({"grad_cosine"})

    def round_scores(self, knowledge: Knowledge) -> np.ndarray:
        return _field(knowledge.rounds, "grad_cosine")


@ATTACKS.register("grad-difference")
class GradientDifference(RoundAttack):
    """Li et al. 2023: how much of the client's step the record's gradient explains."""

    needs: ClassVar[frozenset[str]] = frozenset({"rounds"})
    round_fields: ClassVar[frozenset[str]] = frozenset({"grad_difference"})

    def round_scores(self, knowledge: Knowledge) -> np.ndarray:
        return _field(knowledge.rounds, "grad_difference")


class _FedMIA(RoundAttack):
    """FedMIA (Zhu et al. 2024), "all for one": the other clients' models, which did not train on
    the record, give its non-member distribution each round; the attacked client's value is tested
    against a Gaussian fit to them (one-sided), and the rounds' log-likelihoods are summed.

    With few clients a per-record spread from C-1 values is noisy; ``fixed_variance`` pools it over
    the records of each round (one spread per round), LiRA's remedy for few reference models.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"rounds", "others"})
    signal: ClassVar[str]
    member_is_high: ClassVar[bool]

    def __init__(self, min_sd: float = 1e-4, fixed_variance: bool = False) -> None:
        self.min_sd = min_sd
        self.fixed_variance = fixed_variance

    def round_scores(self, knowledge: Knowledge) -> np.ndarray:
        obs = _field(knowledge.rounds, self.signal)  # (R, n)
        others = _field(knowledge.others, self.signal)  # (R, C', n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mu = np.nanmean(others, axis=1)
            sd = np.nanstd(others, axis=1, ddof=1)
            if self.fixed_variance:  # pooled over records: sqrt of the mean per-record variance
                sd = np.broadcast_to(np.sqrt(np.nanmean(sd**2, axis=1, keepdims=True)), sd.shape)
        sd = np.where(np.isfinite(sd), np.maximum(sd, self.min_sd), np.nan)
        # log-probability that a non-member is at least as extreme (in the member direction)
        tail = norm.logsf(obs, mu, sd) if self.member_is_high else norm.logcdf(obs, mu, sd)
        return -tail

    def score(self, target: Signals, knowledge: Knowledge) -> np.ndarray:
        per_round = self.round_scores(knowledge)
        total = np.nansum(per_round, axis=0)  # independent rounds: log-likelihoods add
        return np.where(np.isfinite(total), total, np.nanmax(total[np.isfinite(total)], initial=0.0))


@ATTACKS.register("fedmia")
class FedMIALoss(_FedMIA):
    round_fields = frozenset({"loss"})
    signal = "loss"
    member_is_high = False


@ATTACKS.register("fedmia-cosine")
class FedMIACosine(_FedMIA):
    round_fields = frozenset({"grad_cosine"})
    signal = "grad_cosine"
    member_is_high = True


def source_inference(client_losses: np.ndarray) -> np.ndarray:
    """Hu et al. 2021: the client whose local models fit a known member best is its source.

    ``client_losses`` (C, n): each client's loss on each member record, averaged over the rounds
    the server observed it (NaN if never). Returns the predicted client of each record.
    """
    filled = np.where(np.isfinite(client_losses), client_losses, np.inf)
    return np.argmin(filled, axis=0)
