"""Collects utility, attack metrics, per-record scores and ROC curves; the audit stage's output."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedmia.audit import evaluate_scores, roc_points
from fedmia.audit.uncertainty import Units
from fedmia.experiment.verdict import Verdict, judge
from fedmia.threats import AttackOutcome, QueryCall

QUERY_INTS = ("call", "record", "n", "queries")


def _per_target(scores: np.ndarray, is_member: np.ndarray, target: np.ndarray) -> list[dict[str, Any]]:
    """Each target's own AUC and TPR at each FPR (no intervals): the spread over targets."""
    out = []
    for t in np.unique(target):
        sel = target == t
        m = evaluate_scores(scores[sel], is_member[sel], intervals=False)
        out.append({"target": int(t), "auc": m.auc, "tpr_at_fpr": m.tpr_at_fpr})
    return out


@dataclass
class Results:
    utility: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    curves: dict[tuple[str, str], dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    _scores: list[pd.DataFrame] = field(default_factory=list)
    _queries: list[pd.DataFrame] = field(default_factory=list)  # the query log (audit.query_log)

    def audit(
        self,
        setting: str,
        party: str,
        outcomes: list[AttackOutcome],
        records: np.ndarray,
        is_member: np.ndarray,
        labels: np.ndarray,
        target_of: np.ndarray | None = None,
        **row_extra: Any,
    ) -> None:
        """Join each attack's scores with the ground truth: the only place the two meet.

        ``target_of`` (one per score): which target model each score is about, when a party's scores of
        several targets are pooled (LiRA's evaluation, ``audit.targets``; ``records``, ``is_member`` and
        ``labels`` are then per score too); the metrics are the pooled ROC's, their intervals two-way over
        targets and records, and each row keeps every target's own AUC and TPR (``per_target``).

        Also records each attack's query accounting in ``extra["queries_by_attack"]["setting/party"]``: the
        queries to the released model it relies on (``AttackOutcome.queries``), or, for a party that holds
        the weights (no accounting), 0 queries, marked not applicable."""
        accounting = self.extra.setdefault("queries_by_attack", {}).setdefault(f"{setting}/{party}", {})
        for o in outcomes:
            if o.queries is not None:
                accounting[o.attack] = {**o.queries.to_dict(), "skipped": o.scores is None}
            else:
                accounting[o.attack] = {"queries": 0, "applicable": False, "skipped": o.scores is None}
            if o.scores is None:
                self.skipped.append({"setting": setting, "party": party, "attack": o.attack, "why": o.skipped or ""})
                continue
            target = np.zeros(len(records), dtype=np.int64) if target_of is None else np.asarray(target_of, np.int64)
            pooled = len(np.unique(target)) > 1
            units = Units(target, np.asarray(records, dtype=np.int64)) if pooled else None
            m = evaluate_scores(o.scores, is_member, labels, units=units)
            extra = dict(row_extra)
            if pooled:
                extra["targets"] = int(len(np.unique(target)))
                extra["per_target"] = _per_target(o.scores, is_member, target)
            self.rows.append(
                {
                    "setting": setting,
                    "party": party,
                    "attack": o.attack,
                    **m.to_dict(),
                    "seconds": o.seconds,
                    **({"info": o.info} if o.info else {}),
                    **extra,
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
                        "target": target,
                    }
                )
            )

    def audit_pooled(
        self,
        setting: str,
        party: str,
        per_target: list[tuple[list[AttackOutcome], np.ndarray]],
        records: np.ndarray,
        labels: np.ndarray,
        **row_extra: Any,
    ) -> None:
        """:meth:`audit_targets` of several targets' outcomes on the same records (each target's
        ``(outcomes, is_member)``), ``per_target[0]`` the run's own target."""
        self.audit_targets(setting, party, [(o, records, truth, labels) for o, truth in per_target], **row_extra)

    def audit_targets(
        self,
        setting: str,
        party: str,
        per_target: list[tuple[list[AttackOutcome], np.ndarray, np.ndarray, np.ndarray]],
        **row_extra: Any,
    ) -> None:
        """:meth:`audit` of several targets' outcomes, each ``(outcomes, records, is_member, labels)`` on the
        records it scored, ``per_target[0]`` the run's own target: an attack that scored every target is
        audited on the pooled scores (``target_of`` tells the targets apart); one that did not is audited on
        the run's own target alone, and its row says so (``targets: 1``). One target: :meth:`audit`."""
        own, records, truth, labels = per_target[0]
        if len(per_target) == 1:
            self.audit(setting, party, own, records, truth, labels, **row_extra)
            return
        complete, partial = [], []
        for i, o in enumerate(own):
            others = [outs[i] for outs, *_ in per_target[1:]]
            if o.scores is not None and all(x.scores is not None for x in others):
                scores = np.concatenate([o.scores, *(x.scores for x in others)])
                complete.append(dataclasses.replace(o, scores=scores))
            else:
                partial.append(o)
        if complete:
            target_of = np.concatenate(
                [np.full(len(r), t, dtype=np.int64) for t, (_, r, _, _) in enumerate(per_target)]
            )
            pooled_records = np.concatenate([r for _, r, _, _ in per_target])
            pooled_truth = np.concatenate([m for _, _, m, _ in per_target])
            pooled_labels = np.concatenate([lab for _, _, _, lab in per_target])
            self.audit(setting, party, complete, pooled_records, pooled_truth, pooled_labels, target_of, **row_extra)
        if partial:  # these could not run on every target (e.g. white-box norms only the target has)
            self.audit(setting, party, partial, records, truth, labels, None, **{**row_extra, "targets": 1})

    def log_queries(self, setting: str, party: str, calls: Sequence[QueryCall]) -> None:
        """Add a party's query log (``BlackBox.calls``) to ``queries_frame``: one row per dataset record per
        call, and one row per call for its synthetic records (record -1, ``n`` of them), with the model
        queries made around them (the record and its probes)."""
        for call in calls:
            real = call.records >= 0
            rows = {
                "call": np.full(int(real.sum()), call.index, dtype=np.int64),
                "purpose": [call.purpose] * int(real.sum()),
                "record": call.records[real],
                "n": np.ones(int(real.sum()), dtype=np.int64),
                "queries": call.per_record[real],
            }
            frame = pd.DataFrame(rows)
            if (~real).any():
                synthetic = pd.DataFrame(
                    {
                        "call": [call.index],
                        "purpose": [call.purpose],
                        "record": [-1],
                        "n": [int((~real).sum())],
                        "queries": [int(call.per_record[~real].sum())],
                    }
                )
                frame = pd.concat([frame, synthetic], ignore_index=True) if len(frame) else synthetic
            frame.insert(0, "party", party)
            frame.insert(0, "setting", setting)
            self._queries.append(frame.astype({c: np.int64 for c in QUERY_INTS}))

    def queries_frame(self) -> pd.DataFrame:
        """The query log: setting, party, call, purpose, record (dataset index, -1 synthetic), n, queries."""
        if not self._queries:
            return pd.DataFrame(columns=["setting", "party", "call", "purpose", *QUERY_INTS[1:]])
        df = pd.concat(self._queries, ignore_index=True)
        for col in ("setting", "party", "purpose"):
            df[col] = df[col].astype("category")
        return df

    def scores_frame(self) -> pd.DataFrame:
        if not self._scores:
            return pd.DataFrame(
                columns=["setting", "party", "attack", "record", "label", "score", "is_member", "target"]
            )
        df = pd.concat(self._scores, ignore_index=True)
        for col in ("setting", "party", "attack"):
            df[col] = df[col].astype("category")
        return df

    def verdicts(self) -> list[Verdict]:
        """One verdict per (setting, party): cross-fitted best attack, interval, paired comparison."""
        return judge(self.scores_frame())

    def metrics(self) -> dict[str, Any]:
        verdicts = [v.to_dict() for v in self.verdicts()]
        return {
            "utility": self.utility,
            "attacks": self.rows,
            "verdicts": verdicts,
            "skipped": self.skipped,
            **self.extra,
        }

    # --- checkpoints: a stage's results as JSON + arrays, and merging them back -------------------
    def to_checkpoint(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays: dict[str, np.ndarray] = {}
        curves = []
        for i, ((setting, party), by_attack) in enumerate(self.curves.items()):
            for j, (attack, (fpr, tpr)) in enumerate(by_attack.items()):
                arrays[f"curve/{i}/{j}/fpr"], arrays[f"curve/{i}/{j}/tpr"] = fpr, tpr
                curves.append([setting, party, attack, f"curve/{i}/{j}"])
        frames = []
        for i, df in enumerate(self._scores):
            for col in ("record", "label", "score", "is_member", "target"):
                arrays[f"scores/{i}/{col}"] = df[col].to_numpy()
            frames.append([str(df["setting"].iloc[0]), str(df["party"].iloc[0]), str(df["attack"].iloc[0])])
        queries = []
        for i, df in enumerate(self._queries):
            for col in QUERY_INTS:
                arrays[f"queries/{i}/{col}"] = df[col].to_numpy()
            queries.append([str(df["setting"].iloc[0]), str(df["party"].iloc[0]), df["purpose"].astype(str).tolist()])
        meta = {
            "queries": queries,
            "utility": self.utility,
            "rows": self.rows,
            "skipped": self.skipped,
            "extra": self.extra,
            "curves": curves,
            "frames": frames,
        }
        return meta, arrays

    @classmethod
    def from_checkpoint(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Results:
        r = cls(utility=meta["utility"], rows=meta["rows"], skipped=meta["skipped"], extra=meta["extra"])
        for setting, party, attack, key in meta["curves"]:
            r.curves.setdefault((setting, party), {})[attack] = (arrays[f"{key}/fpr"], arrays[f"{key}/tpr"])
        for i, (setting, party, attack) in enumerate(meta["frames"]):
            cols = {c: arrays[f"scores/{i}/{c}"] for c in ("record", "label", "score", "is_member")}
            cols["target"] = arrays.get(f"scores/{i}/target", np.zeros(len(cols["record"]), dtype=np.int64))
            r._scores.append(pd.DataFrame({"setting": setting, "party": party, "attack": attack, **cols}))
        for i, (setting, party, purposes) in enumerate(meta.get("queries", [])):
            cols = {c: arrays[f"queries/{i}/{c}"] for c in QUERY_INTS}
            frame = pd.DataFrame({"setting": setting, "party": party, "purpose": purposes, **cols})
            r._queries.append(frame[["setting", "party", "call", "purpose", *QUERY_INTS[1:]]])
        return r

    def merge(self, other: Results) -> None:
        self.utility.update(other.utility)
        self.rows.extend(other.rows)
        self.skipped.extend(other.skipped)
        self.curves.update(other.curves)
        for key, value in other.extra.items():
            if isinstance(value, dict) and isinstance(self.extra.get(key), dict):
                self.extra[key].update(value)
            else:
                self.extra[key] = value
        self._scores.extend(other._scores)
        self._queries.extend(other._queries)
