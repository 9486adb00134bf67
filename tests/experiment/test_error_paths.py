"""Error paths of ``fedmia run``: bad input exits 2 with a message before anything trains or is
written; an internal error exits 1 with its traceback and leaves a resumable run directory."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import Result
from typer.testing import CliRunner

from fedmia.data import MembershipPlan
from fedmia.experiment import centralized, report, runner
from fedmia.experiment.cli import app

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
FAST = ["audit.references=2", "train.epochs=2", "audit.attacks=[loss, rmia]"]


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["run", *map(str, args)])


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any training fails the test: bad input must be refused before it."""

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("training started on bad input")

    monkeypatch.setattr(centralized, "train", refuse)


def assert_input_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, AssertionError), "training started"
    assert "Traceback" not in result.output
    flat = " ".join(result.output.split())
    assert "error:" in flat
    for needle in needles:
        assert needle in flat, flat


def test_out_pointing_at_a_file_exits_2(tmp_path: Path, no_training: None) -> None:
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    result = invoke(QUICKSTART, "--out", target)
    assert_input_error(result, "is a file, not a directory")
    assert target.read_text() == "keep me\n"  # untouched


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_unwritable_run_directory_exits_2(tmp_path: Path, where: str, no_training: None) -> None:
    if where == "under-a-file":
        (tmp_path / "f").write_text("")
        out = tmp_path / "f" / "run"  # its parent is a file: mkdir fails (NotADirectoryError)
    else:
        out = Path("/proc/fedmia-not-here/run")  # procfs refuses new directories, even to root
    result = invoke(QUICKSTART, "--out", out)
    assert_input_error(result, "cannot write the run directory", str(out))


def test_unreadable_data_file_exits_2(tmp_path: Path, no_training: None) -> None:
    """/proc/self/mem is a regular file whose read fails with EIO: a real I/O error, even as root."""
    out = tmp_path / "run"
    result = invoke(QUICKSTART, "data.dataset=purchase100", "data.params={path: /proc/self/mem}", "--out", out)
    assert_input_error(result, "cannot read the data file /proc/self/mem", "Input/output error")
    assert not out.exists()


def test_unknown_attack_parameter_exits_2_before_training(tmp_path: Path, no_training: None) -> None:
    """The issue's example: it used to train, then die with a TypeError and leave a run directory."""
    out = tmp_path / "run"
    result = invoke(QUICKSTART, "audit.attacks=[{name: rmia, params: {bogus: 1}}]", "--out", out)
    assert_input_error(result, "audit.attacks.0", "attack 'rmia'", "bogus: unknown parameter", "gamma (float")
    assert not out.exists()


def test_mistyped_attack_parameter_exits_2(tmp_path: Path, no_training: None) -> None:
    result = invoke(QUICKSTART, "audit.attacks=[{name: rmia, params: {gamma: yes}}]", "--out", tmp_path / "r")
    assert_input_error(result, "attack 'rmia'", "gamma")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["settings=[centralized, centralized]"], "settings lists centralized twice"),
        (["settings=[federated]", "federation.num_clients=4", "audit.observer_client=4"], "observer_client=4"),
        (["settings=[federated]", "federation.num_clients=4", "audit.attacked_clients=5"], "attacked_clients=5"),
    ],
)
def test_config_refusals(tmp_path: Path, overrides: list[str], needle: str, no_training: None) -> None:
    # the in-process backend: a refusal that regressed would federate here, never start Ray
    result = invoke(QUICKSTART, *overrides, "federation.backend=inprocess", "--out", tmp_path / "r")
    assert_input_error(result, needle)


def test_quarters_that_round_down_are_not_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fractions whose rounded sizes sum to fewer records than there are are fine: breast-cancer's 569
    records in quarters round to 142 each (568, one record unused). The run completes (exit 0) on a plan
    of exactly those sizes, and the audit scores the 142 members and 142 non-members."""
    from sklearn.datasets import load_breast_cancer

    n = len(load_breast_cancer().target)  # 569, read from scikit-learn, not from fedmia
    quarter = round(n / 4)
    assert (n, quarter) == (569, 142)
    plans: list[MembershipPlan] = []
    real = runner.make_plan

    def spy(*args: object, **kwargs: object) -> MembershipPlan:
        plans.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return plans[-1]

    monkeypatch.setattr(runner, "make_plan", spy)
    out = tmp_path / "r"
    split = "data.split={members: 0.25, nonmembers: 0.25, population: 0.25, test: 0.25}"
    quick = ["train.epochs=1", "audit.references=0", "audit.attacks=[loss]"]
    result = invoke(QUICKSTART, split, "data.dataset=breast-cancer", *quick, "--out", out)
    assert result.exit_code == 0, result.output
    (plan,) = plans
    assert plan.n_records == n
    sets = (plan.members, plan.nonmembers, plan.population, plan.test)
    assert [len(s) for s in sets] == [quarter] * 4
    assert len(set(np.concatenate(sets).tolist())) == 4 * quarter  # disjoint
    (row,) = json.loads((out / "metrics.json").read_text())["attacks"]
    assert (row["n_members"], row["n_nonmembers"]) == (quarter, quarter)


def test_internal_error_exits_1_with_traceback_and_a_resume_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ValueError from inside the run is a bug, not bad input: exit 1, its traceback kept."""

    def broken(*_a: object, **_k: object) -> None:
        raise ValueError("an internal bug")

    monkeypatch.setattr(centralized, "outsider_audit", broken)
    out = tmp_path / "run"
    result = invoke(QUICKSTART, *FAST, "--out", out)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, ValueError)
    assert "broken" in "".join(traceback.format_exception(result.exception))  # the traceback is there
    failed = json.loads((out / "FAILED.json").read_text())
    assert "an internal bug" in failed["error"]
    assert failed["resume"] == f"fedmia run --resume {out}"
    assert "fedmia run --resume" in result.output
    assert not (out / "metrics.json").exists()


def test_crash_during_the_final_write_leaves_a_resumable_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = tmp_path / "straight"
    assert invoke(QUICKSTART, *FAST, "--out", straight).exit_code == 0

    real = report.plot_roc

    def crash(*_a: object, **_k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report, "plot_roc", crash)
    out = tmp_path / "run"
    first = invoke(QUICKSTART, *FAST, "--out", out)
    assert first.exit_code == 1 and isinstance(first.exception, OSError)
    assert (out / "scores.parquet").exists() and not (out / "metrics.json").exists()
    assert (out / "FAILED.json").exists()

    monkeypatch.setattr(report, "plot_roc", real)
    resumed = invoke("--resume", out)
    assert resumed.exit_code == 0, resumed.output
    assert "restored from checkpoint" in resumed.output  # nothing retrained
    assert not (out / "FAILED.json").exists()
    rows = json.loads((out / "metrics.json").read_text())["attacks"]
    expected = json.loads((straight / "metrics.json").read_text())["attacks"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in expected
    ]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "scores.parquet"), pd.read_parquet(straight / "scores.parquet"))


# ---- only InputError is bad input; every other exception is a bug with its traceback (exit 1) ----------------


@pytest.mark.parametrize(
    ("target", "exc"),
    [
        ("make_plan", ValueError),
        ("make_plan", TypeError),
        ("load_dataset", ValueError),
        ("partition_records", KeyError),
    ],
)
def test_an_internal_error_while_building_data_and_plan_exits_1_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, exc: type[Exception], no_training: None
) -> None:
    """The runner used to turn any ValueError or TypeError here into "bad input" (exit 2), hiding the bug."""

    def broken(*_a: object, **_k: object) -> None:
        raise exc("an internal bug")

    monkeypatch.setattr(runner, target, broken)
    out = tmp_path / "run"
    overrides = ["settings=[federated]", "federation.backend=inprocess"] if target == "partition_records" else []
    result = invoke(QUICKSTART, *overrides, "--out", out)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, exc)
    assert "broken" in "".join(traceback.format_exception(result.exception))
    assert "error:" not in result.output  # not dressed up as bad input
    assert not out.exists()  # it failed while validating, before the run directory


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [  # user input the data, plan or model cannot honour: InputError where it is found, exit 2
        (["data.dataset=purchase-like", "data.params={n: 50, classes: 100}"], "n=50 must be at least classes=100"),
        (["model={name: cnn, params: {}}", "data.dataset=breast-cancer"], "cnn needs image input"),
        (["model.params={hidden: [8], activation: sigmoid}"], "mlp activation must be one of"),
        (["model.params={hidden: [8], dropout: 1.5}"], "dropout must be in [0, 1)"),
        (
            ["data.split={members: 0.0002, nonmembers: 0.3, population: 0.3, test: 0.1}"],
            "data.split: 'members' is empty",
        ),
        (
            ["settings=[federated]", "federation.num_clients=5", "federation.partition={name: natural}"],
            "splits by natural groups",
        ),
    ],
)
def test_input_the_data_cannot_honour_exits_2_naming_it(
    tmp_path: Path, overrides: list[str], needle: str, no_training: None
) -> None:
    out = tmp_path / "r"
    result = invoke(QUICKSTART, *overrides, "federation.backend=inprocess", "--out", out)
    assert_input_error(result, needle)
    assert not out.exists()


def test_an_unreadable_config_file_exits_2(tmp_path: Path, no_training: None) -> None:
    """/proc/self/mem exists and is a regular file, and reading it fails with EIO (even as root)."""
    result = invoke("/proc/self/mem", "--out", tmp_path / "run")
    assert_input_error(result, "cannot read the config file /proc/self/mem", "Input/output error")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_sweep_into_an_unwritable_out_exits_2_before_any_point_runs(
    tmp_path: Path, where: str, no_training: None
) -> None:
    (tmp_path / "f").write_text("")
    out = tmp_path / "f" / "sweep" if where == "under-a-file" else Path("/proc/fedmia-not-here/sweep")
    result = CliRunner().invoke(app, ["sweep", str(QUICKSTART), "--grid", "train.lr=0.1,0.2", "--out", str(out)])
    assert_input_error(result, "cannot write the sweep directory", str(out))


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_audit_dp_into_an_unwritable_out_exits_2_before_any_seed_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """It used to train every seed, then fail writing dp_audit.json with a traceback."""
    from fedmia.experiment import dp_audit

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the audit started before its output directory was checked")

    monkeypatch.setattr(dp_audit, "run_dp_audit", refuse)
    (tmp_path / "f").write_text("")
    out = tmp_path / "f" / "audit" if where == "under-a-file" else Path("/proc/fedmia-not-here/audit")
    config = REPO / "configs" / "dp_audit.yaml"
    result = CliRunner().invoke(app, ["audit-dp", str(config), "--seeds", "1", "--out", str(out)])
    assert_input_error(result, "cannot write the output directory", str(out))


def test_audit_dp_bad_input_after_the_directory_check_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedmia.errors import InputError
    from fedmia.experiment import dp_audit

    def bad(*_a: object, **_k: object) -> None:
        raise InputError("no DP setting in this config")

    monkeypatch.setattr(dp_audit, "run_dp_audit", bad)
    out = tmp_path / "audit"
    result = CliRunner().invoke(app, ["audit-dp", str(REPO / "configs" / "dp_audit.yaml"), "--out", str(out)])
    assert_input_error(result, "no DP setting in this config")
    assert not out.exists()  # the folder made for the check is gone again


def test_a_round_attack_that_fails_propagates_and_one_missing_knowledge_is_skipped() -> None:
    """``_round_scores`` used to swallow ValueError and TypeError, so a bug made a per-round series vanish."""
    from types import SimpleNamespace
    from typing import ClassVar

    from fedmia.attacks import ATTACKS, Knowledge, RoundAttack
    from fedmia.experiment.adversaries import _round_scores

    class Buggy(RoundAttack):
        needs: ClassVar[frozenset[str]] = frozenset()

        def round_scores(self, knowledge: Knowledge) -> np.ndarray:
            raise ValueError("a bug in a round attack")

    class NeedsRounds(RoundAttack):
        needs: ClassVar[frozenset[str]] = frozenset({"rounds"})

        def round_scores(self, knowledge: Knowledge) -> np.ndarray:
            raise AssertionError("scored without the knowledge it needs")

    ATTACKS.register("toy-buggy-rounds")(Buggy)
    ATTACKS.register("toy-needs-rounds")(NeedsRounds)
    try:
        obs = SimpleNamespace(knowledge=Knowledge())
        assert _round_scores([("toy-needs-rounds", {})], obs) == {}  # this party lacks rounds: skipped
        with pytest.raises(ValueError, match="a bug in a round attack"):
            _round_scores([("toy-needs-rounds", {}), ("toy-buggy-rounds", {})], obs)
    finally:
        ATTACKS.unregister("toy-buggy-rounds")
        ATTACKS.unregister("toy-needs-rounds")
