"""The verdict that heads every report: one line per (setting, party) with its best attack by TPR at 1% FPR,
an interval on it, and a paired comparison with the centralized outsider that says whether the
difference is real.

Why TPR at 1% FPR: Carlini et al., "Membership Inference Attacks From First Principles" (IEEE S&P 2022)
argue that an attack is to be judged by how many members it identifies with confidence, i.e. its
true-positive rate at a low false-positive rate, not by average-case accuracy or AUC.

Rules (each checked by an oracle test in ``tests/experiment/test_verdict.py``):

- **best attack, chosen without inflating it**: two-fold cross-fitting over records
  (:func:`fedmia.audit.uncertainty.crossfit_best`): the records are split in halves stratified by
  membership, the attack with the largest TPR at 1% FPR on one half (ties to AUC, then to the attack
  listed first) is scored on the other half, and the two held-out TPRs are averaged. The number is
  therefore not the table's full-sample TPR of that attack, and it is not optimistic;
- **statistic**: TPR at 1% FPR where each half resolves it (at least 100 non-members per half, so
  one false positive is allowed), else AUC, and the line says so;
- **interval**: 95% stratified bootstrap over the records of each half, the choices held fixed;
- **comparison with the centralized outsider** (the baseline): the difference of the two cross-fitted
  statistics, **paired** over the candidate records both parties scored with the same membership
  (one split and the same resamples for both), or unpaired (independent resamples) where they share
  too few; "higher than" / "lower than" when the 95% interval of the difference excludes zero,
  otherwise "indistinguishable from". No ratio is reported.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedmia.audit import is_resolvable
from fedmia.audit.uncertainty import (
    DEFAULT_RESAMPLES,
    CrossFitted,
    Units,
    crossfit_best,
    direction,
    half_nonmembers,
    percentile_interval,
    split_halves,
)

LEVEL = 0.01
LEVEL_KEY = str(LEVEL)  # the key of TPR at 1% FPR in a row's "tpr_at_fpr"
BASELINE = ("centralized", "outsider")
BASELINE_NAME = "the centralized outsider"


def tpr_at_level(row: Mapping[str, Any]) -> float | None:
    """The row's TPR at 1% FPR, or None where its non-members cannot resolve 1% FPR."""
    value = row.get("tpr_at_fpr", {}).get(LEVEL_KEY)
    n = row.get("n_nonmembers")
    if value is None or (n is not None and not is_resolvable(LEVEL, int(n))):
        return None
    return float(value)


def best_row(rows: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The row with the largest resolvable TPR at 1% FPR; ties to the larger AUC, then the first listed."""
    best: Mapping[str, Any] | None = None
    for row in rows:
        tpr = tpr_at_level(row)
        if tpr is None:
            continue
        if best is None or (tpr, row["auc"]) > (tpr_at_level(best), best["auc"]):
            best = row
    return best


@dataclass(frozen=True)
class Verdict:
    setting: str
    party: str
    attack: str | None  # the attack reported ("a / b" where the two halves chose different attacks)
    statistic: str  # "tpr@0.01", or "auc" where a half cannot resolve 1% FPR
    value: float
    interval: tuple[float, float]
    n_members: int
    n_nonmembers: int
    comparison: str  # plain words, e.g. "indistinguishable from the centralized outsider (difference ...)"
    difference: float | None = None  # this party's statistic minus the baseline's (None: no comparison)
    difference_interval: tuple[float, float] | None = None
    direction: str | None = None  # "higher", "lower", "indistinguishable"; None: baseline or no comparison
    paired_records: int | None = None  # records the comparison was paired over; 0: unpaired

    @property
    def who(self) -> str:
        return f"{self.setting} / {self.party}"

    @property
    def text(self) -> str:
        """The one line of the report."""
        lo, hi = self.interval
        if self.statistic == "auc":
            needed = 2 * math.ceil(1 / LEVEL - 1e-9)
            head = (
                f"{self.who}: TPR at 1% FPR not resolvable ({self.n_nonmembers} non-members, {needed} needed "
                f"to choose on one half and report on the other); {self.attack} AUC {self.value:.3f} "
                f"[{lo:.3f}, {hi:.3f}]"
            )
        else:
            chance = ", not distinguishable from chance (0.010)" if lo <= LEVEL else ""
            head = f"{self.who}: {self.attack} finds TPR {self.value:.3f} [{lo:.3f}, {hi:.3f}] at 1% FPR{chance}"
        return f"{head}; {self.comparison}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["interval"] = list(self.interval)
        d["difference_interval"] = None if self.difference_interval is None else list(self.difference_interval)
        d["text"] = self.text
        return d


def _seed() -> np.random.Generator:
    """The generator of every verdict's split and resamples: one fixed seed, so parties scored on the same
    records get the same halves and the same resamples, and a party's line, the baseline's line and their
    paired difference agree (the difference is exactly the two values' difference). The bootstrap is part
    of the analysis, not of the experiment: a report is reproducible."""
    return np.random.default_rng(SPLIT_SEED)


KEY_SHIFT = 32  # a score's key: target << 32 | record (record ids are dataset indices, far below 2**32)


@dataclass(frozen=True)
class _Party:
    setting: str
    party: str
    attacks: list[str]
    keys: np.ndarray  # sorted (target, record) keys every listed attack scored
    is_member: np.ndarray
    scores: np.ndarray  # (attacks, keys)

    def on(self, keys: np.ndarray) -> np.ndarray:
        return self.scores[:, np.searchsorted(self.keys, keys)]

    @property
    def units(self) -> Units:
        return _units(self.keys)


def _units(keys: np.ndarray) -> Units:
    return Units(targets=keys >> KEY_SHIFT, records=keys & ((1 << KEY_SHIFT) - 1))


def _parties(frame: pd.DataFrame) -> dict[tuple[str, str], _Party]:
    """Each party's attacks as one matrix over (target, record) keys. An attack scored on fewer targets than
    the party's others (one that could not run on the promoted targets) is left out of the verdict."""
    out: dict[tuple[str, str], _Party] = {}
    frame = frame.assign(
        key=(frame["target"].to_numpy(dtype=np.int64) << KEY_SHIFT) | frame["record"].to_numpy(dtype=np.int64)
        if "target" in frame
        else frame["record"].to_numpy(dtype=np.int64)
    )
    for (setting, party), sel in frame.groupby(["setting", "party"], observed=True, sort=False):
        counts = sel.groupby("attack", observed=True)["key"].nunique()
        widest = counts[counts == counts.max()].index
        sel = sel[sel["attack"].isin(widest)]
        wide = sel.pivot_table(index="key", columns="attack", values="score", observed=True, aggfunc="first")
        wide = wide.dropna(axis=0)  # keys every attack scored
        order = [a for a in dict.fromkeys(sel["attack"].astype(str)) if a in wide.columns]
        if not order or not len(wide):
            continue
        truth = sel.drop_duplicates("key").set_index("key")["is_member"].astype(bool)
        keys = wide.index.to_numpy(dtype=np.int64)
        out[(str(setting), str(party))] = _Party(
            setting=str(setting),
            party=str(party),
            attacks=order,
            keys=keys,
            is_member=truth.loc[keys].to_numpy(),
            scores=wide[order].to_numpy(dtype=float).T,
        )
    return out


def _level(*sets: tuple[np.ndarray, Units]) -> float | None:
    """1% FPR where each half (as :func:`crossfit_best` will split it) of every score set resolves it, else
    None (AUC)."""
    for m, units in sets:
        if not (m.any() and (~m).any()):
            return None
        if not is_resolvable(LEVEL, half_nonmembers(m, split_halves(m, units, _seed()))):
            return None
    return LEVEL


def _name(p: _Party, fit: CrossFitted) -> str:
    a, b = (p.attacks[i] for i in fit.chosen)
    return a if a == b else f"{a} / {b}"


def _statistic(level: float | None) -> str:
    return "auc" if level is None else f"tpr@{level}"


def _describe(
    diff: float, interval: tuple[float, float], stat: str, paired: int, unit: str = "records"
) -> tuple[str, str]:
    word = direction(interval)
    phrase = {"higher": "higher than", "lower": "lower than", "indistinguishable": "indistinguishable from"}[word]
    what = "" if stat != "auc" else "AUC "
    how = f"paired over {paired} {unit}" if paired else "unpaired: too few shared records"
    lo, hi = interval
    return word, f"{phrase} {BASELINE_NAME} ({what}difference {diff:+.3f} [{lo:+.3f}, {hi:+.3f}], {how})"


SPLIT_SEED = 0
MIN_PAIRED = 0.5  # pair when the shared records are at least this share of the smaller party's


def judge(scores: pd.DataFrame, n_resamples: int = DEFAULT_RESAMPLES) -> list[Verdict]:
    """One verdict per (setting, party), in the order the scores list them (see the module docstring).

    ``scores``: the per-record scores frame (``Results.scores_frame()`` or scores.parquet) with columns
    setting, party, attack, record, score, is_member, and target (several targets: LiRA's evaluation,
    ``audit.targets``; absent: one).
    """
    parties = _parties(scores)
    base = parties.get(BASELINE)
    out = []
    for key, p in parties.items():
        level = _level((p.is_member, p.units))
        (own,) = crossfit_best([p.scores], p.is_member, level, n_resamples=n_resamples, rng=_seed(), units=p.units)
        v = Verdict(
            setting=p.setting,
            party=p.party,
            attack=_name(p, own),
            statistic=_statistic(level),
            value=own.value,
            interval=percentile_interval(own.resamples),
            n_members=int(p.is_member.sum()),
            n_nonmembers=int((~p.is_member).sum()),
            comparison="",
        )
        if key == BASELINE:
            alone = len(parties) == 1
            out.append(
                dataclasses.replace(
                    v,
                    comparison="the baseline"
                    + (" (no other party in this run)" if alone else " for the other parties"),
                )
            )
            continue
        if base is None:
            out.append(dataclasses.replace(v, comparison=f"no comparison ({BASELINE_NAME} is not in this run)"))
            continue
        out.append(_compared(v, p, base, key, level, n_resamples))
    return out


def _compared(
    v: Verdict, p: _Party, base: _Party, key: tuple[str, str], level: float | None, n_resamples: int
) -> Verdict:
    shared = np.intersect1d(p.keys, base.keys)
    same = p.is_member[np.searchsorted(p.keys, shared)] == base.is_member[np.searchsorted(base.keys, shared)]
    shared = shared[same]  # (target, record) keys both scored with the same membership
    m_shared = p.is_member[np.searchsorted(p.keys, shared)]
    enough = len(shared) >= MIN_PAIRED * min(len(p.keys), len(base.keys))
    if enough and m_shared.any() and (~m_shared).any():
        units = _units(shared)
        stat_level = level if level is not None and _level((m_shared, units)) else None
        fa, fb = crossfit_best(
            [p.on(shared), base.on(shared)], m_shared, stat_level, n_resamples=n_resamples, rng=_seed(), units=units
        )
        paired = len(shared)
    else:
        stat_level = level if level is not None and _level((base.is_member, base.units)) else None
        (fa,) = crossfit_best([p.scores], p.is_member, stat_level, n_resamples=n_resamples, rng=_seed(), units=p.units)
        other = np.random.default_rng([SPLIT_SEED, 1])  # independent resamples for the other party's records
        (fb,) = crossfit_best(
            [base.scores], base.is_member, stat_level, n_resamples=n_resamples, rng=other, units=base.units
        )
        paired = 0
    diff_interval = percentile_interval(fa.resamples - fb.resamples)
    targets = _units(shared).n_targets if paired else 1
    unit = "records" if targets == 1 else f"scores ({targets} targets × their records)"
    word, comparison = _describe(fa.value - fb.value, diff_interval, _statistic(stat_level), paired, unit)
    return dataclasses.replace(
        v,
        comparison=comparison,
        difference=fa.value - fb.value,
        difference_interval=diff_interval,
        direction=word,
        paired_records=paired,
    )


def verdict_lines(verdicts: Sequence[Verdict] | Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's verdict: one line per (setting, party); a line saying so when no attack ran."""
    lines = [v.text if isinstance(v, Verdict) else str(v["text"]) for v in verdicts]
    return lines or ["no attack ran, so there is no verdict"]


HOW_TO_READ_TITLE = "How to read TPR at low FPR"


def how_to_read(n_nonmembers: Iterable[int]) -> list[str]:
    """The report's short explanation of TPR at low FPR, with what 1% FPR means in this run's records."""
    counts = sorted({int(n) for n in n_nonmembers})
    allowed = [math.floor(n * LEVEL + 1e-9) for n in counts]  # false positives 1% FPR allows
    if not counts:
        records = "on a few hundred non-members that is a handful of records."
    else:
        if len(counts) == 1:
            records = f"at most {allowed[0]} of the {counts[0]} non-members attacked"
        else:
            records = f"at most {allowed[0]} to {allowed[-1]} of the {counts[0]} to {counts[-1]} non-members attacked"
        records += "; so few records make the TPR there noisy." if allowed[-1] < 20 else "."
    return [
        "An attack gives every target record a score; calling the records above a threshold members catches "
        "a fraction of the members (the true-positive rate, TPR) and wrongly accuses a fraction of the "
        "non-members (the false-positive rate, FPR).",
        "Carlini et al., “Membership Inference Attacks From First Principles” (IEEE S&P 2022), show that "
        "average-case measures such as accuracy or AUC hide whether an attack can identify any member with "
        "confidence, and compare attacks by their TPR at a low FPR instead; fedmia's ROC curves are log-log "
        "to show that corner.",
        f"At 1% FPR the attack wrongly accuses 1 non-member in 100: {records}",
        "Guessing at random gives TPR = FPR, so a TPR of 0.010 at 1% FPR is chance and 0.050 is five times "
        "chance; with fewer than 100 non-members 1% FPR cannot be resolved, and the tables say n/a rather "
        "than interpolate.",
        "Every number carries a 95% interval, [low, high]: the range its value takes over bootstrap "
        "resamples of the attacked records (members and non-members resampled separately). It covers the "
        "luck of which records were drawn, not the luck of training: other seeds give other models "
        "(fedmia run --seeds N measures that).",
        "The best of several attacks, picked after seeing them all, is an optimistic estimate; so the verdict "
        "picks each party's best attack on one half of the records and reports it on the other half (and "
        "vice versa, averaged), and compares parties by their paired difference on the same records: "
        "“indistinguishable” means its 95% interval covers zero.",
    ]
