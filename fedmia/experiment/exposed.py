"""The most exposed records of each (setting, party) for metrics.json (``"exposure"``) and the reports.

Each party's records are ranked by its best attack (the verdict's rule: the largest resolvable TPR at 1%
FPR; the best AUC where no attack resolves 1% FPR) and described by :mod:`fedmia.audit.exposure`'s outlier
measure over every record of the dataset.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmia.audit.exposure import DEFAULT_NEIGHBOURS, DEFAULT_TOP_K, most_exposed, outlierness
from fedmia.data import Dataset
from fedmia.experiment.document import Block, Bullets, Heading, Paragraph, TableBlock
from fedmia.experiment.results import Results
from fedmia.experiment.verdict import best_row

POOL = "every record of the dataset (members, non-members, population, test)"
REPORT_TOP = 5  # rows per party in the reports (metrics.json keeps DEFAULT_TOP_K)


def exposure_summary(
    results: Results, data: Dataset, k: int = DEFAULT_TOP_K, neighbours: int = DEFAULT_NEIGHBOURS
) -> dict[str, Any]:
    """``{"neighbours", "pool", "top_k", "parties": [Exposure.to_dict(), ...]}``; no parties where no attack ran."""
    frame = results.scores_frame()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in results.rows:
        groups.setdefault((row["setting"], row["party"]), []).append(row)
    chosen: dict[tuple[str, str], tuple[str, str]] = {}
    for key, rows in groups.items():
        best = best_row(rows)
        if best is not None:
            chosen[key] = (str(best["attack"]), "best TPR at 1% FPR")
        else:
            chosen[key] = (str(max(rows, key=lambda r: r["auc"])["attack"]), "best AUC (1% FPR unresolvable)")
    parties: list[dict[str, Any]] = []
    if chosen and len(frame):
        targets = np.unique(frame["record"].to_numpy())
        o = dict(zip(targets.tolist(), outlierness(data.x, data.y, targets, neighbours).tolist(), strict=True))
        for (setting, party), (attack, why) in chosen.items():
            sel = frame[(frame["setting"] == setting) & (frame["party"] == party) & (frame["attack"] == attack)]
            if not len(sel):
                continue
            records = sel["record"].to_numpy()
            e = most_exposed(
                setting,
                party,
                attack,
                records,
                sel["label"].to_numpy(),
                sel["is_member"].to_numpy(),
                sel["score"].to_numpy(),
                np.array([o[int(r)] for r in records]),
                k=k,
            )
            parties.append({**e.to_dict(), "chosen_by": why})
    return {"neighbours": neighbours, "pool": POOL, "metric": "euclidean", "top_k": k, "parties": parties}


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


EXPOSURE_COLUMNS = ("setting", "party", "rank", "record", "label", "member", "score", "outlier", "outlier pct")


def exposure_blocks(exposure: dict[str, Any] | None) -> list[Block]:
    """The reports' "Most exposed records" section (empty when the run has none)."""
    if not exposure or not exposure.get("parties"):
        return []
    rows, lines = [], []
    for p in exposure["parties"]:
        for e in p["top"][:REPORT_TOP]:
            rows.append(
                (
                    p["setting"],
                    p["party"],
                    str(e["rank"]),
                    str(e["record"]),
                    str(e["label"]),
                    "yes" if e["is_member"] else "no",
                    f"{e['score']:.7g}",
                    _fmt(e["outlier"]),
                    _fmt(e["outlier_percentile"], 2),
                )
            )
        rho = "undefined" if p["spearman_rho"] is None else f"{p['spearman_rho']:+.3f} (p = {p['spearman_p']:.2g})"
        lines.append(
            f"{p['setting']} / {p['party']} ({p['attack']}, {p['chosen_by']}): Spearman rho between score and "
            f"outlierness over {p['n_members']} members {rho}; {p['members_in_top']} of the top "
            f"{len(p['top'])} are members; mean outlier measure of those members "
            f"{_fmt(p['mean_outlier_top_members'])} vs {_fmt(p['mean_outlier_members'])} over all members"
        )
    return [
        Heading("Most exposed records"),
        Paragraph(
            f"Each party's top {REPORT_TOP} records by its best attack's score. Outlier measure: the mean "
            f"Euclidean distance to the {exposure['neighbours']} nearest records of the same class among "
            f"{exposure['pool']}; `outlier pct` is its percentile among the party's targets (1.00 = the most "
            "isolated). Outliers tend to be the most exposed (Long et al. 2018; Carlini et al. 2022): a positive "
            f"rho says so. metrics.json (`exposure`) keeps the top {exposure['top_k']}."
        ),
        TableBlock(EXPOSURE_COLUMNS, rows, numeric=("rank", "score", "outlier", "outlier pct")),
        Bullets(lines),
    ]
