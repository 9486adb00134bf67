"""``fedmia run --seeds N``: N independent runs in one parent directory and their aggregate."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from fedmia.audit.uncertainty import mean_interval
from fedmia.experiment.cli import app
from fedmia.experiment.seeds import aggregate

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
TINY = ["train.epochs=2", "audit.references=0", "audit.attacks=[loss, confidence]"]


def test_mean_interval_is_the_student_t_interval() -> None:
    x = [0.10, 0.14, 0.09, 0.13]
    m, s = sum(x) / 4, math.sqrt(sum((v - sum(x) / 4) ** 2 for v in x) / 3)
    half = stats.t.ppf(0.975, 3) * s / 2  # t quantile, 3 degrees of freedom, s / sqrt(4)
    got = mean_interval(x)
    assert got.mean == pytest.approx(m) and got.interval == pytest.approx((m - half, m + half))
    assert mean_interval([0.5]).interval is None  # one run has no spread
    assert mean_interval([0.3, 0.3]).interval == (0.3, 0.3)
    assert mean_interval([0.0, 0.02], bounds=(0.0, 1.0)).interval[0] == 0.0  # clipped to what a rate can be


def _metrics(server_tpr: float, base_tpr: float, diff: float) -> dict[str, Any]:
    row = {"tpr_at_fpr": {"1e-05": None, "0.0001": None, "0.001": None, "0.01": 0.0, "0.1": 0.2}}
    verdict = {"statistic": "tpr@0.01", "interval": [0, 1], "n_nonmembers": 539}
    return {
        "utility": {"centralized": {"test_accuracy": 0.9, "generalization_gap": 0.1}},
        "attacks": [
            {"setting": "centralized", "party": "outsider", "attack": "loss", "auc": 0.6, **row},
            {"setting": "federated", "party": "server", "attack": "loss", "auc": 0.7, **row},
        ],
        "verdicts": [
            {**verdict, "setting": "centralized", "party": "outsider", "attack": "loss", "value": base_tpr,
             "difference": None, "direction": None, "comparison": "the baseline for the other parties"},
            {**verdict, "setting": "federated", "party": "server", "attack": "loss", "value": server_tpr,
             "difference": diff, "direction": "higher", "comparison": "higher than ..."},
        ],
    }  # fmt: skip


def test_aggregate_means_and_paired_differences_over_seeds() -> None:
    """Three seeds: the server's per-seed paired differences 0.02, 0.03, 0.04 give a mean of 0.03 whose t
    interval (0.03 ± 4.30 · 0.01 / √3 = [0.005, 0.055]) excludes zero: "higher"; −0.02, 0.01, 0.04 do not."""
    runs = [(f"p0{i}", _metrics(0.05 + d, 0.05, d)) for i, d in enumerate([0.02, 0.03, 0.04])]
    summary = aggregate(runs, [0, 1, 2])
    base, server = summary["verdicts"]
    assert base["baseline"] and base["text"].endswith("; the baseline")
    assert server["difference"]["mean"] == pytest.approx(0.03)
    assert server["difference"]["interval"] == pytest.approx([0.03 - 0.02484, 0.03 + 0.02484], abs=1e-4)
    assert server["direction"] == "higher" and "higher than the centralized outsider" in server["text"]
    assert server["value"]["values"] == pytest.approx([0.07, 0.08, 0.09])
    loss = next(a for a in summary["attacks"] if a["party"] == "server")
    assert loss["auc"]["mean"] == pytest.approx(0.7) and loss["tpr_at_fpr"]["0.001"] is None
    assert summary["utility"]["centralized"]["test_accuracy"]["values"] == [0.9, 0.9, 0.9]
    noisy = aggregate([(f"p0{i}", _metrics(0.05, 0.05, d)) for i, d in enumerate([-0.02, 0.01, 0.04])], [0, 1, 2])
    assert noisy["verdicts"][1]["direction"] == "indistinguishable"
    assert "indistinguishable from the centralized outsider" in noisy["verdicts"][1]["text"]


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, ["run", *map(str, args)])


def test_seeds_run_writes_one_run_per_seed_and_an_aggregate_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "seeds"
    result = invoke(QUICKSTART, *TINY, "--seeds", 2, "--out", out)
    assert result.exit_code == 0, result.output
    children = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert children == ["p00-seed=0", "p01-seed=1"]
    summary = json.loads((out / "summary.json").read_text())
    per_seed = [json.loads((out / c / "metrics.json").read_text()) for c in children]
    loss = next(a for a in summary["attacks"] if a["attack"] == "loss")
    values = [next(r["auc"] for r in m["attacks"] if r["attack"] == "loss") for m in per_seed]
    assert loss["auc"]["values"] == values and loss["auc"]["mean"] == pytest.approx(sum(values) / 2)
    assert values[0] != values[1]  # each seed redraws the split and the model: independent runs
    assert [yaml.safe_load((out / c / "config.yaml").read_text())["seed"] for c in children] == [0, 1]
    assert "over 2 seeds" in (out / "report.md").read_text() and (out / "report.html").is_file()
    # a new run into it is refused; --resume keeps the finished seed and reruns the missing one
    again = invoke(QUICKSTART, *TINY, "--seeds", 2, "--out", out)
    assert again.exit_code == 2 and "fedmia run --resume" in again.output
    kept = (out / "p00-seed=0" / "metrics.json").stat().st_mtime_ns
    for p in sorted((out / "p01-seed=1").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (out / "p01-seed=1").rmdir()
    (out / "summary.json").unlink()
    resumed = invoke("--resume", out)
    assert resumed.exit_code == 0, resumed.output
    assert (out / "p00-seed=0" / "metrics.json").stat().st_mtime_ns == kept
    assert json.loads((out / "summary.json").read_text())["attacks"] == summary["attacks"]


def test_seeds_in_the_config_and_bad_seeds(tmp_path: Path) -> None:
    out = tmp_path / "listed"
    result = invoke(QUICKSTART, *TINY, "audit.attacks=[loss]", "seeds=[3, 5]", "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["p00-seed=3", "p01-seed=5"]
    assert json.loads((out / "summary.json").read_text())["seeds"] == [3, 5]
    for bad, needle in ((["seeds=[1, 1]"], "seeds must differ"), (["--seeds", "0"], "--seeds must be at least 1")):
        r = invoke(QUICKSTART, *TINY, *bad, "--out", tmp_path / "bad")
        assert r.exit_code == 2 and needle in r.output, r.output
        assert not (tmp_path / "bad").exists()
