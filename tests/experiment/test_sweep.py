"""``fedmia sweep``: grid parsing, validation before anything runs, the outputs, continuing a sweep,
and one Ray runtime for all points."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedmia.experiment import centralized, sweep
from fedmia.experiment.cli import app
from fedmia.experiment.config import ConfigError
from fedmia.experiment.verdict import judge

TINY = """
name: tiny
settings: [centralized]
data: {dataset: breast-cancer, split: {test: 0.09}}
model: {name: mlp, params: {hidden: [16]}}
train: {epochs: 2}
audit: {references: 2, attacks: [loss, confidence]}
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def invoke(*args: str | Path) -> object:
    return CliRunner().invoke(app, ["sweep", *map(str, args)])


@pytest.mark.parametrize(
    ("raw", "values"),
    [
        ("1,2,3", ["1", "2", "3"]),
        ("[16],[64, 32]", ["[16]", "[64, 32]"]),
        (
            "[],[{name: l2, params: {weight_decay: 1e-3}}],[dropout]",
            ["[]", "[{name: l2, params: {weight_decay: 1e-3}}]", "[dropout]"],
        ),
        ("'a,b',c", ["'a,b'", "c"]),
    ],
)
def test_values_split_at_top_level_commas_only(raw: str, values: list[str]) -> None:
    assert sweep.split_values(raw) == values


@pytest.mark.parametrize("raw", ["[1,2", "1,,2", "1,", "]1["])
def test_malformed_values_are_input_errors(raw: str) -> None:
    with pytest.raises(ConfigError):
        sweep.split_values(raw)


def test_grid_values_are_yaml() -> None:
    grid = sweep.parse_grid(["train.lr=0.1,1e-2", "defenses=[],[{name: l2}]"])
    assert grid == {"train.lr": [0.1, 0.01], "defenses": [[], [{"name": "l2"}]]}


def test_points_are_the_product_and_config_grid_merges_with_cli(tiny: Path) -> None:
    tiny.write_text(TINY + "sweep: {grid: {train.epochs: [1, 2]}}\n")
    points = sweep.plan_points(tiny, [], ["train.lr=0.1,0.2"])
    assert [dict(p.values) for p in points] == [
        {"train.epochs": e, "train.lr": lr} for e in (1, 2) for lr in (0.1, 0.2)
    ]
    assert [(p.cfg.train.epochs, p.cfg.train.lr) for p in points] == [(1, 0.1), (1, 0.2), (2, 0.1), (2, 0.2)]
    assert all(not p.cfg.sweep.grid for p in points)  # a point's own config is not a sweep
    assert len({p.dirname for p in points}) == 4


@pytest.mark.parametrize(
    ("grid", "needle"),
    [
        ("train.epoch=1,2", "train.epoch: unknown field"),
        ("train.epochs=1,-2", "train.epochs"),
        ("train.epochs=[1,2", "unclosed"),
        ("audit.attacks=[loss],[nope]", "unknown attack 'nope'"),
        ("epochs", "must look like"),
    ],
)
def test_bad_grid_exits_2_before_anything_runs(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grid: str, needle: str
) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("training started on a bad grid")

    monkeypatch.setattr(centralized, "train", refuse)
    out = tmp_path / "sweep"
    result = invoke(tiny, "--grid", grid, "--out", out)
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    assert needle in " ".join(result.output.split())  # type: ignore[attr-defined]
    assert not out.exists()


def test_no_grid_exits_2(tiny: Path, tmp_path: Path) -> None:
    result = invoke(tiny, "--out", tmp_path / "s")
    assert result.exit_code == 2 and "nothing to sweep" in result.output  # type: ignore[attr-defined]


def test_summary_takes_the_best_auc_and_the_runs_verdict() -> None:
    """The best AUC is read from the rows; the best TPR at 1% FPR, its interval and the comparison with the
    centralized outsider are the verdict's (cross-fitted and paired, tests/experiment/test_verdict.py), never
    the optimistic maximum of the rows."""
    rng = np.random.default_rng(0)
    m = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    scores = pd.concat(
        pd.DataFrame({"setting": s, "party": p, "attack": a, "record": np.arange(600), "score": sc, "is_member": m})
        for s, p, a, sc in (
            ("centralized", "outsider", "a", rng.normal(size=600) + 0.5 * m),
            ("centralized", "outsider", "b", rng.normal(size=600) + 0.2 * m),
            ("federated", "server", "a", rng.normal(size=600) + 2.0 * m),
        )
    )
    verdicts = [v.to_dict() for v in judge(scores)]
    metrics = {
        "utility": {"centralized": {"test_accuracy": 0.9, "generalization_gap": 0.1, "epsilon": None}},
        "attacks": [
            {"setting": "centralized", "party": "outsider", "attack": "a", "auc": 0.6, "auc_ci": [0.55, 0.65]},
            {"setting": "centralized", "party": "outsider", "attack": "b", "auc": 0.7, "auc_ci": [0.66, 0.74]},
            {"setting": "federated", "party": "server", "attack": "a", "auc": 0.9},
        ],
        "verdicts": verdicts,
        "skipped": [{"setting": "centralized", "party": "outsider", "attack": "d", "why": "x"}],
    }
    base, server = sweep.summarize(metrics)
    assert (base["best_auc"], base["best_auc_attack"], base["best_auc_ci"]) == (0.7, "b", [0.66, 0.74])
    assert base["attacks_run"] == 2 and base["skipped"] == ["d"] and base["test_accuracy"] == 0.9
    for row, v in zip((base, server), verdicts, strict=True):
        assert row["verdict"] == v["text"] and row["best_tpr_attack"] == v["attack"]
        assert (row["best_tpr_at_1pct"], row["best_tpr_at_1pct_ci"]) == (v["value"], v["interval"])
    assert base["vs_centralized_outsider"] is None
    assert server["vs_centralized_outsider"] == verdicts[1]["difference"] > 0
    assert server["vs_centralized_outsider_direction"] == "higher"
    assert sweep.sweep_table_rows([{**server, "label": "p", "skipped": []}])[0][6].endswith(" higher")


def test_summary_without_verdicts_says_so() -> None:
    metrics = {"attacks": [{"setting": "centralized", "party": "outsider", "attack": "a", "auc": 0.6}]}
    (row,) = sweep.summarize(metrics)
    assert row["verdict"].startswith("no verdict") and row["best_tpr_at_1pct"] is None


def test_sweep_writes_every_output_and_continues(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = invoke(tiny, "--grid", "train.epochs=1,3", "--out", out)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    points = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert points == ["p00-epochs=1", "p01-epochs=3"]
    with (out / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["point"], r["train.epochs"], r["party"]) for r in rows] == [
        ("p00-epochs=1", "1", "outsider"),
        ("p01-epochs=3", "3", "outsider"),
    ]
    for r, point in zip(rows, points, strict=True):  # each row is its point's metrics.json, summarized
        metrics = json.loads((out / point / "metrics.json").read_text())
        assert float(r["test_accuracy"]) == metrics["utility"]["centralized"]["test_accuracy"]
        assert float(r["best_auc"]) == max(a["auc"] for a in metrics["attacks"])
    saved = json.loads((out / "sweep.json").read_text())
    assert [p["values"] for p in saved["points"]] == [{"train.epochs": 1}, {"train.epochs": 3}]
    assert (out / "privacy-utility-outsider.png").stat().st_size > 0
    # the sweep's report: a verdict line per point first, then the table, figures embedded, links to the points
    report = (out / "report.md").read_text()
    verdict_lines = [line for line in report.splitlines() if line.startswith("- train.epochs=")]
    assert [line.split(" — ")[0] for line in verdict_lines] == ["- train.epochs=1", "- train.epochs=3"]
    for line, point in zip(verdict_lines, points, strict=True):  # each point's own verdict, as its run wrote it
        (verdict,) = json.loads((out / point / "metrics.json").read_text())["verdicts"]
        assert line.endswith(" — " + verdict["text"]) and verdict["text"].startswith("centralized / outsider: ")
    assert report.index(verdict_lines[-1]) < report.index("| point | setting | party |")
    assert "[p00-epochs=1: train.epochs=1](p00-epochs=1/report.html)" in report
    page = (out / "report.html").read_text()
    assert 'id="verdict"' in page and 'src="data:image/png;base64,' in page and "How to read TPR" in page
    for point in points:
        assert (out / point / "report.html").is_file() and (out / point / "report.md").read_text().startswith(
            "# fedmia run: tiny\n\n## Verdict"
        )

    # the same sweep again: finished points are kept, an interrupted one resumes
    kept = (out / points[0] / "metrics.json").stat().st_mtime_ns
    first = json.loads((out / points[1] / "metrics.json").read_text())
    (out / points[1] / "metrics.json").unlink()
    again = invoke(tiny, "--grid", "train.epochs=1,3", "--out", out)
    assert again.exit_code == 0, again.output  # type: ignore[attr-defined]
    assert "finished earlier, kept" in again.output and "resuming" in again.output  # type: ignore[attr-defined]
    assert (out / points[0] / "metrics.json").stat().st_mtime_ns == kept
    redone = json.loads((out / points[1] / "metrics.json").read_text())

    def timeless(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert timeless(redone["attacks"]) == timeless(first["attacks"])  # seeded: the resumed point gives the same result

    # another grid into the same directory is refused
    other = invoke(tiny, "--grid", "train.epochs=2", "--out", out)
    assert other.exit_code == 2 and "different sweep" in other.output  # type: ignore[attr-defined]


def test_one_ray_runtime_for_all_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "fed.yaml"
    cfg.write_text(TINY.replace("settings: [centralized]", "settings: [centralized, federated]"))
    entered: list[str | None] = []
    ran: list[str] = []

    @contextlib.contextmanager
    def runtime(address: str | None = None) -> Iterator[None]:
        entered.append(address)
        yield

    def fake_point(point: sweep.Point, out: Path, console: object) -> dict[str, object]:
        ran.append(point.dirname)
        return {"utility": {}, "attacks": [], "skipped": []}

    monkeypatch.setattr(sweep, "ray_runtime", runtime)
    monkeypatch.setattr(sweep, "run_point", fake_point)
    points = sweep.plan_points(cfg, [], ["train.epochs=1,2,3"])
    sweep.run_sweep(points, tmp_path / "out", sweep.Console())
    assert entered == [None] and len(ran) == 3


def test_sweep_over_seeds_reports_each_points_aggregate(tiny: Path, tmp_path: Path) -> None:
    """--seeds 2: each point is a seeds directory (one run per seed) and the sweep's row is its aggregate:
    the mean over the seeds and the verdict across them."""
    out = tmp_path / "sweep"
    result = invoke(tiny, "--grid", "train.epochs=1,2", "--seeds", "2", "--out", out)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    saved = json.loads((out / "sweep.json").read_text())
    for point, row in zip(["p00-epochs=1", "p01-epochs=2"], saved["rows"], strict=True):
        assert sorted(p.name for p in (out / point).iterdir() if p.is_dir()) == ["p00-seed=0", "p01-seed=1"]
        per_seed = [json.loads((out / point / s / "metrics.json").read_text()) for s in ("p00-seed=0", "p01-seed=1")]
        mean_loss = sum(next(r["auc"] for r in m["attacks"] if r["attack"] == "loss") for m in per_seed) / 2
        summary = json.loads((out / point / "summary.json").read_text())
        loss = next(a for a in summary["attacks"] if a["attack"] == "loss")
        assert loss["auc"]["mean"] == pytest.approx(mean_loss)
        assert row["best_auc"] == pytest.approx(max(a["auc"]["mean"] for a in summary["attacks"]))
        assert "over 2 seeds" in row["verdict"]
    bad = invoke(tiny, "--grid", "train.epochs=1,2", "--seeds", "0", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "--seeds must be at least 1" in bad.output  # type: ignore[attr-defined]
