"""The verdict that heads every report: one line per (setting, party) with its best attack by TPR at 1% FPR
and how it compares with the centralized outsider's best.

Why TPR at 1% FPR: Carlini et al., "Membership Inference Attacks From First Principles" (IEEE S&P 2022)
argue that an attack is to be judged by how many members it identifies with confidence, i.e. its
true-positive rate at a low false-positive rate, not by average-case accuracy or AUC.

Rules (each checked by an oracle test in ``tests/experiment/test_verdict.py``):

- best attack of a (setting, party): the largest TPR at 1% FPR among the attacks whose sample resolves
  1% FPR (:func:`fedmia.audit.is_resolvable`: at least one false positive allowed, i.e. >= 100
  non-members); ties go to the larger AUC, then to the attack listed first;
- none resolvable: the line says so (with the number of non-members) and names the best attack by AUC;
- comparison with the centralized outsider's best TPR ``b`` (a TPR ``t``): "about the same" when
  ``|t - b|`` is below one member record of either sample (``max(1/n_members)``), otherwise
  ``t/b`` times it (``>= 1.1``), "slightly above" (``1 < t/b < 1.1``) or "below" it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedmia.audit import is_resolvable

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
    attack: str | None  # best by TPR at 1% FPR; None where no attack's sample resolves 1% FPR
    tpr: float | None
    auc: float | None  # the best attack's AUC (when unresolvable: the best AUC, of auc_attack)
    auc_attack: str | None
    n_nonmembers: int
    n_members: int
    comparison: str  # plain words: "2.1× the centralized outsider (0.036)", "below ...", ...
    ratio: float | None  # tpr / the centralized outsider's; None where not comparable or it is 0

    @property
    def who(self) -> str:
        return f"{self.setting} / {self.party}"

    @property
    def text(self) -> str:
        """The one line of the report."""
        if self.attack is None:
            needed = math.ceil(1 / LEVEL - 1e-9)
            best = "" if self.auc_attack is None else f"; best AUC {self.auc:.3f} ({self.auc_attack})"
            return f"{self.who}: TPR at 1% FPR not resolvable ({self.n_nonmembers} non-members, {needed} needed){best}"
        assert self.tpr is not None and self.auc is not None
        chance = ", no better than chance" if self.tpr <= LEVEL else ""
        return (
            f"{self.who}: {self.attack} finds TPR {self.tpr:.3f} at 1% FPR{chance} (AUC {self.auc:.3f}); "
            f"{self.comparison}"
        )


def _compare(tpr: float, n_members: int, base: Verdict | None, is_base: bool, alone: bool) -> tuple[str, float | None]:
    if is_base:
        return ("the baseline (no other party in this run)" if alone else "the baseline for the other parties"), 1.0
    if base is None:
        return f"no comparison ({BASELINE_NAME} is not in this run)", None
    if base.tpr is None:
        return f"no comparison ({BASELINE_NAME}'s TPR at 1% FPR is not resolvable)", None
    b = base.tpr
    ratio = tpr / b if b > 0 else None
    times = "" if ratio is None else f"; {ratio:.2f}×"
    one_record = max((1 / n for n in (n_members, base.n_members) if n > 0), default=0.0)  # 0: counts unknown
    if abs(tpr - b) < one_record:
        return f"about the same as {BASELINE_NAME} ({b:.3f})", ratio
    if tpr < b:
        return f"below {BASELINE_NAME} ({b:.3f}{times})", ratio
    if ratio is None:
        return f"above {BASELINE_NAME} ({b:.3f})", None
    if ratio >= 1.1:
        return f"{ratio:.1f}× {BASELINE_NAME} ({b:.3f})", ratio
    return f"slightly above {BASELINE_NAME} ({b:.3f}{times})", ratio


def verdicts(rows: Sequence[Mapping[str, Any]]) -> list[Verdict]:
    """One verdict per (setting, party), in the order the rows list them; ``rows`` are metrics rows
    (``Results.rows`` or metrics.json's "attacks")."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["setting"], row["party"]), []).append(row)

    def first_pass(key: tuple[str, str], group: list[Mapping[str, Any]]) -> Verdict:
        best = best_row(group)
        by_auc = max(group, key=lambda r: r["auc"])  # max keeps the first of equals
        chosen = best or by_auc
        return Verdict(
            setting=key[0],
            party=key[1],
            attack=None if best is None else best["attack"],
            tpr=None if best is None else tpr_at_level(best),
            auc=float(chosen["auc"]),
            auc_attack=by_auc["attack"] if best is None else best["attack"],
            n_nonmembers=int(chosen.get("n_nonmembers", 0)),
            n_members=int(chosen.get("n_members", 0)),
            comparison="",
            ratio=None,
        )

    bare = {key: first_pass(key, group) for key, group in groups.items()}
    base = bare.get(BASELINE)
    out = []
    for key, v in bare.items():
        if v.tpr is None:
            out.append(v)
            continue
        comparison, ratio = _compare(v.tpr, v.n_members, base, key == BASELINE, len(bare) == 1)
        out.append(dataclasses.replace(v, comparison=comparison, ratio=ratio))
    return out


def verdict_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The report's verdict: one line per (setting, party); a line saying so when no attack ran."""
    return [v.text for v in verdicts(rows)] or ["no attack ran, so there is no verdict"]


HOW_TO_READ_TITLE = "How to read TPR at low FPR"


def how_to_read(n_nonmembers: Iterable[int]) -> list[str]:
    """The report's short explanation of TPR at low FPR, with what 1% FPR means in this run's records."""
    counts = sorted({int(n) for n in n_nonmembers})
    allowed = [math.floor(n * LEVEL + 1e-9) for n in counts]  # false positives 1% FPR allows
    caveat = "the best of several attacks, picked after the fact, is an optimistic estimate"
    if not counts:
        records = f"on a few hundred non-members that is a handful of records, and {caveat}."
    else:
        if len(counts) == 1:
            records = f"at most {allowed[0]} of the {counts[0]} non-members attacked"
        else:
            records = f"at most {allowed[0]} to {allowed[-1]} of the {counts[0]} to {counts[-1]} non-members attacked"
        records += f"; so few records make the TPR there noisy, and {caveat}." if allowed[-1] < 20 else "."
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
    ]
