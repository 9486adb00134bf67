"""Attacks on federated views: functions of per-round arrays, combined over rounds.

Each attack scores every round it can (``round_scores``, (R, n) with NaN where the record's model
was not observed) and combines the rounds into one score, so the audit can also report when
leakage peaks.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from scipy.stats import norm, rankdata

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
    """Li et al. 2023 (ICLR, "Effective passive membership inference attacks in federated learning against
    overparameterized models"): how much of the client's step the record's gradient explains,

        d = ||s|| - ||s - g_x||,   s = the client's descent step (global - local), g_x = the record's gradient
                                   at the global model,

    averaged over the rounds the client was observed. ``GradientObserver`` computes d in the cancellation-free
    form (2 s.g_x - ||g_x||^2) / (||s|| + ||s - g_x||) in float64.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"rounds"})
    round_fields: ClassVar[frozenset[str]] = frozenset({"grad_difference"})

    def round_scores(self, knowledge: Knowledge) -> np.ndarray:
        return _field(knowledge.rounds, "grad_difference")


@ATTACKS.register("grad-norm")
class GradientNorm(RoundAttack):
    """White-box gradient norm: score = -||g_x||, the norm of the record's loss gradient at the global model
    each observed round started from, averaged over those rounds (members are fit: small gradients).

    The "Grad-Norm" baseline of FedMIA (Zhu et al. 2024; their code scores -||g_x||^2 at the global model,
    after Nasr et al.); we average the norm, not its square, over rounds, so one round with a large
    gradient does not dominate the mean. Reads ``grad_norm`` (R, n).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"rounds"})
    round_fields: ClassVar[frozenset[str]] = frozenset({"grad_norm"})

    def round_scores(self, knowledge: Knowledge) -> np.ndarray:
        return -_field(knowledge.rounds, "grad_norm")


@ATTACKS.register("loss-drop")
class LossDrop(RoundAttack):
    """How much the client's local training lowered the record's loss, per round:

        drop_r(x) = loss(x; global model the round started from) - loss(x; the client's local model of round r),

    averaged over the rounds the client was observed (higher = member: a client's training lowers its own
    records' loss most). The server's view: ``global_loss`` (R, n) and the client's ``loss`` (R, n), NaN
    where the client was not sampled. Subtracting the starting loss removes each record's difficulty and the
    global model's progress, which a plain loss threshold (``loss-trajectory``) reads as membership.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"rounds"})
    round_fields: ClassVar[frozenset[str]] = frozenset({"loss", "global_loss"})

    def round_scores(self, knowledge: Knowledge) -> np.ndarray:
        return _field(knowledge.rounds, "global_loss") - _field(knowledge.rounds, "loss")


def logit_conf_from_loss(loss: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) with p = exp(-loss): the exact logit-scaled confidence of a cross-entropy loss.

    -loss - log(1 - exp(-loss)), with expm1 for small losses. A loss that underflowed to 0 (p within 1e-16
    of 1) is floored at the smallest positive float64 (logit ~708), so such records tie; the ``logit_conf``
    signal, computed from the logits, does not underflow and is preferred where it is observed.
    """
    loss = np.maximum(np.asarray(loss, dtype=np.float64), np.finfo(np.float64).tiny)
    return np.asarray(-loss - np.log(-np.expm1(-loss)))


class _FedMIA(RoundAttack):
    """FedMIA (Zhu et al. 2024, "FedMIA: An Effective Membership Inference Attack Exploiting 'All for One'
    Principle in Federated Learning"), "all for one": the other clients' models did not train on the record
    (client datasets are disjoint), so each round they give its non-member distribution. Per round r, with
    phi_r the attacked client's value and mu_r, sd_r the mean and spread (ddof 1) of the other clients' values,
    the one-tailed test (paper's step 2, code's ``scipy.stats.norm.cdf(target, mu_out, sd_out)``)

        s_r(x) = -log P(a non-member is at least as member-like as phi_r) = -log Phi(+-(phi_r - mu_r) / sd_r)

    (upper tail when high = member), and rounds combine as the MEAN over the rounds in which the client was
    observed (NaN rounds excluded):  score(x) = mean_r s_r(x).

    Deviation from the reference code, named: it averages the per-round confidence Phi(z_r) itself; we average
    -log of the tail probability 1 - Phi(z_r), a monotone transform of the same per-round test. Phi saturates at
    1.0 in float64 beyond z ~ 8, tying the strongest members where low-FPR results are read; the log tail
    (``norm.logsf``) does not, and its mean is the log geometric mean of the rounds' p-values. The mean (not a
    sum) makes a client observed in one round and one observed in ten comparable, so scores pooled over
    clients are on one scale.

    With few clients a per-record spread from C-1 values is noisy; ``fixed_variance`` pools it over
    the records of each round (one spread per round), LiRA's remedy for few reference models.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"rounds", "others"})
    signal: ClassVar[str]
    member_is_high: ClassVar[bool]

    def __init__(self, min_sd: float = 1e-4, fixed_variance: bool = False) -> None:
        self.min_sd = min_sd
        self.fixed_variance = fixed_variance

    def values(self, knowledge: Knowledge) -> tuple[np.ndarray, np.ndarray]:
        """The attacked client's values (R, n) and the other clients' (R, C', n)."""
        return _field(knowledge.rounds, self.signal), _field(knowledge.others, self.signal)

    def round_scores(self, knowledge: Knowledge) -> np.ndarray:
        obs, others = self.values(knowledge)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mu = np.nanmean(others, axis=1)
            sd = np.nanstd(others, axis=1, ddof=1)
            if self.fixed_variance:  # pooled over records: sqrt of the mean per-record variance
                sd = np.broadcast_to(np.sqrt(np.nanmean(sd**2, axis=1, keepdims=True)), sd.shape)
        sd = np.where(np.isfinite(sd), np.maximum(sd, self.min_sd), np.nan)
        # log-probability that a non-member is at least as extreme (in the member direction)
        tail = norm.logsf(obs, mu, sd) if self.member_is_high else norm.logcdf(obs, mu, sd)
        return np.asarray(-tail)


@ATTACKS.register("fedmia")
class FedMIALoss(_FedMIA):
    """FedMIA-I (the paper's loss-based variant) on the logit-scaled confidence phi = log(p_y / (1 - p_y)),
    high = member.

    The reference code (Liar-Mask/FedMIA, mia_attack_auto.py, ``lira_attack_ldh_cosine(attack_mode='loss')``)
    fits its Gaussian to -cross-entropy; it also has a logit-margin ``hinge_loss_fn``, unused there. We use
    LiRA's logit scaling (Carlini et al. 2022) instead: the loss is bounded below by 0 and piles up there for
    the fitted records, so a Gaussian fits it poorly exactly in the member tail; the logit of p_y is close to
    Gaussian across models. Being a monotone function of the loss, it carries the same information about each
    model; what changes is how well the per-record Gaussian fits, hence the tail probabilities.

    Reads ``logit_conf`` where both the attacked client's and the other clients' views carry it; otherwise
    derives it from ``loss`` exactly (``logit_conf_from_loss``), which ties records whose loss underflowed to 0.
    """

    round_fields = frozenset({"loss"})
    signal = "logit_conf"
    member_is_high = True

    def values(self, knowledge: Knowledge) -> tuple[np.ndarray, np.ndarray]:
        if all(getattr(part, "logit_conf", None) is not None for part in (knowledge.rounds, knowledge.others)):
            return super().values(knowledge)
        obs, others = _field(knowledge.rounds, "loss"), _field(knowledge.others, "loss")
        return logit_conf_from_loss(obs), logit_conf_from_loss(others)


@ATTACKS.register("fedmia-cosine")
class FedMIACosine(_FedMIA):
    """FedMIA-II: the same test on cos(g_x, client step) (``grad_cosine``), high = member."""

    round_fields = frozenset({"grad_cosine"})
    signal = "grad_cosine"
    member_is_high = True


def source_inference(client_losses: np.ndarray, block: int = 512) -> np.ndarray:
    """Which client did a known member come from? Hu et al. 2021 ("Source Inference Attacks in Federated
    Learning", ICDM): the client whose local model has the lowest loss on the record is its source (their
    code, FedAvg-SIAs/models/Sia.py, takes the argmin over the local models of one round).

    ``client_losses`` (R, C, n): each client's local model's loss on each record, per round, NaN where the
    client was not observed that round; a (C, n) array is one round. Each round compares only the clients
    observed in it, so a round's overall loss level (lower late in training) cannot favour the clients that
    happened to be sampled late, which averaging each client's loss over its own rounds did. Per round r and
    observed client k:

        w_rk(x) = (#other observed clients with a higher loss + 1/2 #with an equal loss) / (#observed clients - 1),

    the share of that round's comparisons k wins (1 for the round's argmin, Hu et al.'s vote). Rounds with a
    single observed client compare nothing and are skipped. Rounds combine as each client's MEAN of w over the
    rounds it was compared in, so a client sampled often does not collect more votes than one sampled rarely;
    ties in the mean go to the client with more comparisons won in total, then to the lower index.

    Returns the predicted client index (n,), or -1 for a record that no round compared two clients on.
    Records are independent, so they are processed in blocks of ``block`` records: the temporaries are
    (R, C, block) arrays, not (R, C, n) ones (100 clients x 50 rounds x 8,000 records would be 320 MB each).
    """
    losses = np.asarray(client_losses)
    if losses.ndim == 2:
        losses = losses[None]
    if losses.ndim != 3:
        raise ValueError(f"client_losses must be (R, C, n) or (C, n), got shape {losses.shape}")
    n = losses.shape[2]
    out = np.empty(n, dtype=np.int64)
    for a in range(0, n, block):
        out[a : a + block] = _source_inference_block(losses[:, :, a : a + block].astype(np.float64))
    return out


def _source_inference_block(losses: np.ndarray) -> np.ndarray:
    """``source_inference`` of an (R, C, b) block of records (see there)."""
    seen = np.isfinite(losses)  # (R, C, n)
    n_seen = seen.sum(axis=1, keepdims=True)  # (R, 1, n)
    # average rank of each loss among its round's clients, unobserved ones last (+inf): among the observed
    # clients, rank = #lower + (#equal incl. itself + 1) / 2, so #higher + #equal-others / 2 = n_seen - rank
    rank = rankdata(np.where(seen, losses, np.inf), method="average", axis=1)
    wins = n_seen - rank
    compared = seen & (n_seen > 1)
    share = np.where(compared, wins / np.maximum(n_seen - 1, 1), 0.0)
    rounds_compared = compared.sum(axis=0)  # (C, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_share = np.where(rounds_compared > 0, share.sum(axis=0) / rounds_compared, -np.inf)
    total_wins = np.where(compared, wins, 0.0).sum(axis=0)
    # argmax of mean_share; among equal means the most comparisons won; argmax takes the lowest index last
    tied = mean_share == mean_share.max(axis=0, keepdims=True)
    predicted = np.argmax(np.where(tied, total_wins, -np.inf), axis=0)
    out: np.ndarray = np.where(rounds_compared.any(axis=0), predicted, -1)
    return out


def source_inference_chance(partition_sizes: Sequence[int] | np.ndarray) -> float:
    """The accuracy of always guessing the largest client: its share of the member records.

    With unequal clients this, not 1 / C, is what a source inference attack must beat.
    """
    sizes = np.asarray(partition_sizes, dtype=np.float64)
    if sizes.ndim != 1 or sizes.size == 0 or (sizes < 0).any() or sizes.sum() <= 0:
        raise ValueError(f"partition_sizes must be non-negative counts with a positive total, got {partition_sizes}")
    return float(sizes.max() / sizes.sum())
