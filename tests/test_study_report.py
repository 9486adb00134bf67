"""simulations/study_report.py: reading seeds-aggregated and multi-target sweeps, and the intervals on the
differences it prints (trends across points, defenses against `none` paired by seed)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

SCRIPT = Path(__file__).resolve().parent.parent / "simulations" / "study_report.py"


@pytest.fixture(scope="module")
def sr() -> Any:
    spec = importlib.util.spec_from_file_location("study_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(tpr: float, auc: float, acc: float, targets: int = 1, rho: float = 0.1) -> dict[str, Any]:
    """A metrics.json with one centralized outsider and two attacks (the second always weaker)."""
    tprs = {"0.001": None, "0.01": tpr, "0.1": 0.3}
    rows = [
        {"setting": "centralized", "party": "outsider", "attack": "lira", "auc": auc, "tpr_at_fpr": tprs,
         "auc_ci": [auc - 0.02, auc + 0.02], "tpr_at_fpr_ci": {"0.01": [tpr - 0.01, tpr + 0.01]}, "targets": targets},
        {"setting": "centralized", "party": "outsider", "attack": "loss", "auc": auc - 0.05, "tpr_at_fpr": tprs,
         "auc_ci": [auc - 0.07, auc - 0.03], "tpr_at_fpr_ci": {"0.01": [0.0, 0.02]}, "targets": targets},
    ]  # fmt: skip
    verdict = {
        "setting": "centralized", "party": "outsider", "attack": "lira", "statistic": "tpr@0.01", "value": tpr,
        "interval": [tpr - 0.01, tpr + 0.01], "n_members": 100, "n_nonmembers": 500 * targets,
        "comparison": "the baseline (no other party in this run)", "difference": None,
        "difference_interval": None, "direction": None, "text": "baseline",
    }  # fmt: skip
    return {
        "utility": {"centralized": {"test_accuracy": acc, "test_accuracy_ci": [acc - 0.05, acc + 0.05],
                                    "generalization_gap": 0.0, "epsilon": None}},
        "attacks": rows,
        "verdicts": [verdict],
        "skipped": [],
        "exposure": {"parties": [{"setting": "centralized", "party": "outsider", "spearman_rho": rho}]},
    }  # fmt: skip


def _seeds_point(root: Path, name: str, planned: list[int], runs: dict[int, dict[str, Any]]) -> Path:
    pdir = root / name
    pdir.mkdir(parents=True)
    (pdir / "seeds.json").write_text(json.dumps({"seeds": planned, "config": {}}))
    for i, s in enumerate(planned):
        if s in runs:
            (pdir / f"p{i:02d}-seed={s}").mkdir()
            (pdir / f"p{i:02d}-seed={s}" / "metrics.json").write_text(json.dumps(runs[s]))
    return pdir


def test_seeds_point_is_the_mean_with_a_t_interval_and_a_partial_one_says_so(sr: Any, tmp_path: Path) -> None:
    tprs, aucs = [0.10, 0.14, 0.12], [0.70, 0.74, 0.75]
    runs = {s: _metrics(t, a, 0.9, rho=0.1 * (s + 1)) for s, t, a in zip((0, 1, 2), tprs, aucs, strict=True)}
    rows, method = sr.load_point(_seeds_point(tmp_path, "p00-x", [0, 1, 2], runs))
    (r,) = rows
    assert method == "3 seeds"
    assert r["best_tpr_at_1pct"] == pytest.approx(np.mean(tprs))
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(tprs), scale=np.std(tprs, ddof=1) / math.sqrt(3))
    assert r["best_tpr_at_1pct_ci"] == pytest.approx([lo, hi])
    assert r["best_auc_attack"] == "lira" and r["auc_values"] == pytest.approx(aucs)
    assert r["tpr_values"] == pytest.approx(tprs)
    assert r["rho"] == pytest.approx(0.2)  # the mean of the seeds' rho
    partial = {s: runs[s] for s in (0, 2)}
    rows, method = sr.load_point(_seeds_point(tmp_path, "p01-x", [0, 1, 2], partial))
    assert method == "2 seeds of 3 (partial)"
    assert rows[0]["tpr_values"] == pytest.approx([0.10, 0.12])
    assert sr.load_point(_seeds_point(tmp_path, "p02-x", [0, 1, 2], {})) is None


def test_one_run_point_names_its_pooled_targets(sr: Any, tmp_path: Path) -> None:
    (tmp_path / "p00").mkdir()
    (tmp_path / "p00" / "metrics.json").write_text(json.dumps(_metrics(0.2, 0.8, 0.9, targets=4)))
    rows, method = sr.load_point(tmp_path / "p00")
    assert method == "1 seed, 4 targets pooled"
    assert rows[0]["best_auc_ci"] == pytest.approx([0.78, 0.82]) and rows[0]["tpr_values"] is None


def test_welch_difference_across_seeds_matches_scipy(sr: Any) -> None:
    a, b = [0.10, 0.14, 0.12], [0.30, 0.21, 0.26, 0.28]
    d, (lo, hi) = sr.difference(np.mean(a), None, a, np.mean(b), None, b)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    h = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert d == pytest.approx(np.mean(b) - np.mean(a))
    assert (lo, hi) == pytest.approx((d - h, d + h))
    assert sr.word((lo, hi)) == "higher"


def test_difference_from_bootstrap_intervals_and_words(sr: Any) -> None:
    d, ci = sr.difference(0.5, [0.45, 0.55], None, 0.52, [0.47, 0.57], None)
    h = 1.96 * math.sqrt(2 * (0.1 / 3.92) ** 2)
    assert ci == pytest.approx((0.02 - h, 0.02 + h))
    assert sr.word(ci) == "indistinguishable"
    assert sr.word((-0.2, -0.1)) == "lower"
    assert sr.difference(None, None, None, 0.5, None, None) is None
    assert sr.difference(0.4, None, None, 0.5, None, None) == (pytest.approx(0.1), None)


def test_defenses_against_none_are_paired_by_seed(sr: Any, tmp_path: Path) -> None:
    base = [0.10, 0.20, 0.30]  # seed-to-seed spread far larger than the defense's effect ...
    defended = [b - 0.05 + e for b, e in zip(base, (0.001, -0.001, 0.0), strict=True)]  # ... a steady -0.05
    d, ci = sr.paired(base, defended)
    assert d == pytest.approx(-0.05)
    assert sr.word(ci) == "lower"  # the paired difference sees it; unpaired intervals would overlap
    assert sr.paired(base, defended[:2], [0, 1, 2], [0, 1]) == sr.paired(base[:2], defended[:2])  # shared seeds
    assert sr.paired(base, defended[:1], [0, 1, 2], [2])[1] is None  # one shared seed: no interval
    assert sr.paired(base, defended[:1], [0, 1, 2], [2])[0] == pytest.approx(defended[0] - base[2])
    unpaired = sr.difference(np.mean(base), None, base, np.mean(defended), None, defended)
    assert sr.word(unpaired[1]) == "indistinguishable"
    l2 = [{"name": "l2", "params": {"weight_decay": 0.001}}]
    plan = {
        "points": [{"name": "p00-none", "values": {"defenses": []}}, {"name": "p01-l2", "values": {"defenses": l2}}]
    }
    (tmp_path / "sweep-plan.json").write_text(json.dumps(plan))
    _seeds_point(
        tmp_path, "p00-none", [0, 1, 2], {s: _metrics(t, 0.7, 0.9) for s, t in zip((0, 1, 2), base, strict=True)}
    )
    _seeds_point(
        tmp_path, "p01-l2", [0, 1, 2], {s: _metrics(t, 0.7, 0.9) for s, t in zip((0, 1, 2), defended, strict=True)}
    )
    rows, methods = sr.load_rows("defenses", tmp_path)
    assert methods == ["3 seeds"]
    text = "\n".join(sr.defenses_lines(rows))
    assert "| l2 weight_decay=0.001 |" in text
    assert "| **-0.050 [" in text and "]** / +0.000 [+0.000, +0.000] |" in text


def test_party_gap_is_paired_within_each_seed(sr: Any) -> None:
    def row(party: str, tprs: list[float], seeds: list[int]) -> dict[str, Any]:
        return {"point": "p00", "setting": "federated", "party": party, "values": {"x": 1}, "x": 1.0,
                "tpr_values": tprs, "auc_values": [0.6] * len(tprs), "seeds": seeds}  # fmt: skip

    outsider = row("outsider", [0.01, 0.05, 0.09], [0, 1, 2])
    server = row("server", [0.03, 0.07, 0.11], [0, 1, 2])  # +0.02 in every seed
    (line,) = sr.party_gap_lines([outsider, server])[4:]
    assert line == "| 1 | **+0.020 [+0.020, +0.020]** | +0.000 [+0.000, +0.000] |"
    server["seeds"] = [1, 2, 0]  # the same values from other seeds: no longer a steady gap
    (line,) = sr.party_gap_lines([outsider, server])[4:]
    assert "**" not in line.split("|")[2]
