"""Collects utility, attack metrics, per-record scores and ROC curves; the audit stage's output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedmia.audit import evaluate_scores, roc_points
from fedmia.threats import AttackOutcome


@dataclass
class Results:
    utility: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    curves: dict[tuple[str, str], dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    _scores: list[pd.DataFrame] = field(default_factory=list)

    def audit(
        self,
        setting: str,
        party: str,
        outcomes: list[AttackOutcome],
        records: np.ndarray,
        is_member: np.ndarray,
        labels: np.ndarray,
        **row_extra: Any,
    ) -> None:
        """Join each attack's scores with the ground truth: the only place the two meet."""
        for o in outcomes:
            if o.scores is None:
                self.skipped.append({"setting": setting, "party": party, "attack": o.attack, "why": o.skipped or ""})
                continue
            m = evaluate_scores(o.scores, is_member, labels)
            self.rows.append(
                {
                    "setting": setting,
                    "party": party,
                    "attack": o.attack,
                    **m.to_dict(),
                    "seconds": o.seconds,
                    **row_extra,
                }
            )
            self.curves.setdefault((setting, party), {})[o.attack] = roc_points(o.scores, is_member)
            self._scores.append(
                pd.DataFrame(
                    {
                        "setting": setting,
                        "party": party,
                        "attack": o.attack,
                        "record": records.astype(np.int64),
                        "label": labels.astype(np.int64),
                        "score": o.scores,
                        "is_member": is_member,
                    }
                )
            )

    def scores_frame(self) -> pd.DataFrame:
        if not self._scores:
            return pd.DataFrame(columns=["setting", "party", "attack", "record", "label", "score", "is_member"])
        df = pd.concat(self._scores, ignore_index=True)
        for col in ("setting", "party", "attack"):
            df[col] = df[col].astype("category")
        return df

    def metrics(self) -> dict[str, Any]:
        return {"utility": self.utility, "attacks": self.rows, "skipped": self.skipped, **self.extra}
