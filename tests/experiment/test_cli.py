"""The ``fedmia run`` command: exit code 2 on bad input (naming the field), and the results contract."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import Result
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fedmia.audit.epsilon import epsilon_lower_bound
from fedmia.experiment.cli import app
from fedmia.experiment.config import load_config

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
FAST = ["audit.references=4", "train.epochs=5"]
FPR_KEYS = {"1e-05": 1e-5, "0.0001": 1e-4, "0.001": 1e-3, "0.01": 1e-2, "0.1": 1e-1}
ROW_KEYS = {"setting", "party", "attack", "auc", "balanced_accuracy", "advantage", "tpr_at_fpr"}
ROW_KEYS |= {"n_members", "n_nonmembers", "seconds"}


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["run", *map(str, args)])


def flat(text: str) -> str:
    """Output without whitespace, so a line wrapped by rich still matches."""
    return "".join(text.split())


# ---- bad input: exit 2, the field named, nothing written --------------------------------------------


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.epoch=5", "train.epoch"),  # unknown key
        ("train.epochs=five", "train.epochs"),  # wrong type
        ("train.epochs=0", "train.epochs"),  # out of range
        ("audit.attacks=[loss, nosuch]", "audit.attacks.1.name"),  # unknown attack
        ("data.dataset=imagenet", "data.dataset"),  # unknown dataset
        ("model.name=resnet9000", "model.name"),  # unknown model
    ],
)
def test_invalid_config_exits_2_naming_the_field(tmp_path: Path, override: str, field: str) -> None:
    out = tmp_path / "run"
    result = invoke(QUICKSTART, override, "--out", out)
    assert result.exit_code == 2, result.output
    assert f"{field}:" in result.output
    assert "error" in result.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no partial run directory beside it either


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("train: {epochs: 3\n", "not valid YAML"),
        ("- loss\n- rmia\n", "mapping"),
        ("42\n", "mapping"),
    ],
)
def test_bad_config_files_exit_2(tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    result = invoke(cfg, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert needle in result.output and "bad.yaml" in flat(result.output)
    assert not (tmp_path / "run").exists()


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = invoke(tmp_path / "nowhere.yaml", "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "not found" in result.output
    assert not (tmp_path / "run").exists()


def test_malformed_override_exits_2(tmp_path: Path) -> None:
    result = invoke(QUICKSTART, "train.epochs", "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "train.epochs" in result.output


def test_non_empty_out_exits_2_and_keeps_its_contents(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = invoke(QUICKSTART, *FAST, "--out", out)
    assert result.exit_code == 2, result.output
    assert "not empty" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"


def test_missing_data_file_exits_2(tmp_path: Path) -> None:
    result = invoke(
        QUICKSTART, "data.dataset=purchase100", f"data.params={{path: {tmp_path / 'p.csv'}}}", "--out", tmp_path / "run"
    )
    assert result.exit_code == 2, result.output
    assert "p.csv" in flat(result.output)
    assert not (tmp_path / "run").exists()


# ---- end to end: the results contract ---------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    result: Result
    path: Path
    overrides: list[str]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    path = tmp_path_factory.mktemp("cli") / "run"
    result = invoke(QUICKSTART, *FAST, "--out", path)
    assert result.exit_code == 0, result.output
    return Run(result, path, FAST)


def test_run_directory_holds_every_output(quick_run: Run) -> None:
    names = {p.name for p in quick_run.path.iterdir()}
    assert {"config.yaml", "metrics.json", "scores.parquet", "report.md"} <= names
    pngs = [p for p in quick_run.path.iterdir() if p.suffix == ".png"]
    assert pngs, names
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in names if n.startswith(".")], names  # no temp files left behind


def test_saved_config_round_trips(quick_run: Run) -> None:
    saved = load_config(quick_run.path / "config.yaml")
    assert saved == load_config(QUICKSTART, quick_run.overrides)
    assert saved.audit.references == 4 and saved.train.epochs == 5


def _roc_counts(score: np.ndarray, member: np.ndarray) -> list[tuple[int, int]]:
    """(TP, FP) of the rule "member iff score >= t" for t = +inf, then every distinct score from the highest
    down: the ROC by brute force, independent of sklearn's roc_curve that fedmia.audit.metrics uses."""
    points = [(0, 0)]
    for t in np.unique(score)[::-1]:
        flagged = score >= t
        points.append((int((flagged & member).sum()), int((flagged & ~member).sum())))
    return points


def test_metrics_contract(quick_run: Run) -> None:
    """Every number of metrics.json against an oracle: the split sizes from scikit-learn's digits and the
    config's fractions; each attack's advantage, balanced accuracy, precision, TPR at fixed FPR (counted
    false positives, never interpolated) and per-class AUC recomputed from its rows of scores.parquet."""
    from sklearn.datasets import load_digits

    metrics = json.loads((quick_run.path / "metrics.json").read_text())
    cfg = load_config(QUICKSTART, quick_run.overrides)
    target = load_digits().target
    n_members, n_test = round(cfg.data.split.members * len(target)), round(cfg.data.split.test * len(target))
    assert (n_members, n_test) == (539, 180)
    util = metrics["utility"]["centralized"]
    # accuracies are counts over the members (train) and the test split (test)
    for key, n in (("train_accuracy", n_members), ("test_accuracy", n_test)):
        assert util[key] * n == pytest.approx(round(util[key] * n), abs=1e-9), (key, util[key])
    assert util["generalization_gap"] == pytest.approx(util["train_accuracy"] - util["test_accuracy"], abs=1e-12)
    assert util["test_accuracy"] > 0.5  # digits with an MLP, 10 classes: well above chance
    df = pd.read_parquet(quick_run.path / "scores.parquet")
    rows = metrics["attacks"]
    assert [r["attack"] for r in rows] == [a.name for a in cfg.audit.attacks]  # every configured attack ran
    for r in rows:
        assert set(r) >= ROW_KEYS, r.keys()
        assert r["setting"] == "centralized" and r["party"] == "outsider"
        assert r["n_members"] == n_members and r["n_nonmembers"] == n_members  # members = nonmembers = 0.3
        assert 0 <= r["seconds"] <= metrics["wall_seconds"]  # one attack's time is part of the run's
        part = df[df["attack"] == r["attack"]]
        score, member = part["score"].to_numpy(), part["is_member"].to_numpy()
        np.testing.assert_array_equal(part["label"].to_numpy(), target[part["record"].to_numpy()])
        points = _roc_counts(score, member)
        gaps = [tp / n_members - fp / n_members for tp, fp in points[1:]]
        op = int(np.argmax(gaps)) + 1  # the first (highest) threshold of the largest TPR - FPR
        advantage = max(gaps[op - 1], 0.0)
        assert r["advantage"] == pytest.approx(advantage, abs=1e-12), r["attack"]
        assert r["balanced_accuracy"] == pytest.approx((1 + advantage) / 2, abs=1e-12)
        tp, fp = points[op]
        assert r["precision"] == pytest.approx(tp / (tp + fp), abs=1e-12), r["attack"]
        assert set(r["tpr_at_fpr"]) == set(FPR_KEYS)
        for key, level in FPR_KEYS.items():
            allowed = math.floor(n_members * level + 1e-9)  # false positives the level allows
            # unresolvable (fewer than one false positive allowed): null, never a guess
            want = None if allowed < 1 else max(tp for tp, fp in points if fp <= allowed) / n_members
            assert r["tpr_at_fpr"][key] == (None if want is None else pytest.approx(want, abs=1e-12)), (r, key)
        assert [k for k, v in r["tpr_at_fpr"].items() if v is not None] == ["0.01", "0.1"]  # 539 non-members
        per_class = {
            str(c): float(roc_auc_score(member[part["label"] == c], score[part["label"] == c])) for c in range(10)
        }
        assert r["per_class_auc"] == pytest.approx(per_class, abs=1e-12), r["attack"]
        # one run's records are not independent trials: an estimate, named so, with no confidence level
        assert r["epsilon_estimate_kind"] == "one run, not a bound" and "epsilon_estimate_confidence" not in r
        assert "empirical_epsilon" not in r and not any(k.startswith("epsilon_lb") for k in r)


def test_scores_parquet_reproduces_the_metrics(quick_run: Run) -> None:
    metrics = json.loads((quick_run.path / "metrics.json").read_text())
    df = pd.read_parquet(quick_run.path / "scores.parquet")
    assert {"attack", "record", "score", "is_member"} <= set(df.columns)
    for row in metrics["attacks"]:
        part = df[(df["attack"] == row["attack"]) & (df["setting"] == row["setting"]) & (df["party"] == row["party"])]
        assert len(part) == row["n_members"] + row["n_nonmembers"]  # one row per target record
        assert part["record"].is_unique
        assert int(part["is_member"].sum()) == row["n_members"]
        assert part["score"].map(math.isfinite).all()
        assert roc_auc_score(part["is_member"].astype(int), part["score"]) == pytest.approx(row["auc"], abs=1e-12)
        bound = epsilon_lower_bound(part["score"].to_numpy(), part["is_member"].to_numpy(), confidence=0.95)
        assert bound.epsilon == pytest.approx(row["epsilon_estimate"], abs=1e-12)
    # every attack scored the same records with the same ground truth
    by_attack = [
        g.sort_values("record")[["record", "is_member"]].to_numpy() for _, g in df.groupby("attack", observed=True)
    ]
    assert all((b == by_attack[0]).all() for b in by_attack[1:])


def test_stdout_has_table_and_run_directory(quick_run: Run) -> None:
    out = quick_run.result.stdout
    assert "AUC" in out and "TPR@1%FPR" in out
    cfg = load_config(QUICKSTART, quick_run.overrides)
    for a in cfg.audit.attacks:
        assert a.name in out
    assert "rundirectory:" + flat(str(quick_run.path)) in flat(out)


def test_report_has_the_table(quick_run: Run) -> None:
    report = (quick_run.path / "report.md").read_text()
    assert "| setting | party | attack | AUC |" in report
    assert "epsilon_estimate (one run, not a bound)" in report  # named as an estimate in the header
    assert "epsilon_lb" not in report and "(95%)" not in report.split("epsilon_estimate")[1].split("|")[0]
    assert "| centralized | outsider | lira-online |" in report
    metrics = json.loads((quick_run.path / "metrics.json").read_text())
    loss = next(r for r in metrics["attacks"] if r["attack"] == "loss")
    lo, hi = loss["auc_ci"]  # the table shows each number with its 95% bootstrap interval
    assert f"| centralized | outsider | loss | {loss['auc']:.3f} [{lo:.3f}, {hi:.3f}] |" in report


def test_default_run_directory_under_out_dir(tmp_path: Path) -> None:
    """Without --out the run lands in <out_dir>/<name>-<time>; a one-attack, no-reference run is quick."""
    result = invoke(QUICKSTART, "train.epochs=1", "audit.references=0", "audit.attacks=[loss]", f"out_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("quickstart-")
    assert (runs[0] / "metrics.json").is_file()
    assert flat(str(runs[0])) in flat(result.stdout)


def test_exposure_lists_the_best_attacks_top_records(quick_run: Run) -> None:
    """metrics.json's "exposure": the verdict's best attack's highest-scored records, as scores.parquet has them."""
    from fedmia.experiment.verdict import best_row

    metrics = json.loads((quick_run.path / "metrics.json").read_text())
    (party,) = metrics["exposure"]["parties"]
    assert party["attack"] == best_row(metrics["attacks"])["attack"]
    df = pd.read_parquet(quick_run.path / "scores.parquet")
    mine = df[df["attack"] == party["attack"]].sort_values("score", ascending=False, kind="stable")
    top = mine.head(len(party["top"]))
    assert [e["record"] for e in party["top"]] == top["record"].tolist()
    assert [e["is_member"] for e in party["top"]] == top["is_member"].tolist()
    assert all(e["outlier"] > 0 for e in party["top"])
    assert "## Most exposed records" in (quick_run.path / "report.md").read_text()
