"""Reproducibility and resume: a run killed with SIGKILL in the middle of its federation (on Ray, in a
process of its own) resumes from the last finished round and ends identically to an uninterrupted run of
the same config and seed made in this process on the in-process backend: the same config gives identical
results across processes and federation backends (exactly, under both numeric environments of .ci/run), and
the resume loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # Ray runs in the subprocesses only: the reference run is in process
ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = [
    "settings=[centralized, federated]",
    "federation.num_clients=4",
    "federation.rounds=5",
    "federation.local_epochs=2",
    "train.epochs=10",
    "audit.references=2",
    "audit.targets=1",
    "audit.server_references=2",
    "audit.attacks=[loss, lira-offline-fixed, rmia]",
]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedmia", "run", *args]


def _strip_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_timings(v) for k, v in obj.items() if k not in ("seconds", "wall_seconds")}
    if isinstance(obj, list):
        return [_strip_timings(v) for v in obj]
    return obj


def _results(run: Path) -> tuple[Any, pd.DataFrame]:
    return _strip_timings(json.loads((run / "metrics.json").read_text())), pd.read_parquet(run / "scores.parquet")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of the test config, in this process and in process (no Ray): the killed and resumed
    runs federate on Ray, so their equality with it also checks that the two backends give the same results."""
    from typer.testing import CliRunner

    from fedmia.experiment.cli import app

    out = tmp_path_factory.mktemp("runs") / "reference"
    args = [*OVERRIDES, "federation.backend=inprocess"]  # the same results as on Ray (tests/fl/test_inprocess.py)
    result = CliRunner().invoke(app, ["run", str(ROOT / "configs/compare.yaml"), *args, "--out", str(out)])
    assert result.exit_code == 0, result.output[-3000:]
    return out


def test_kill_9_mid_federation_then_resume_ends_identically(reference_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(str(ROOT / "configs/compare.yaml"), *OVERRIDES, "--out", str(out)),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    rounds = out / ".checkpoints" / "federated"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(rounds.glob("round-*.json"))) < 2:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
    proc.wait(timeout=30)
    finished = len(list(rounds.glob("round-*.json")))
    assert 2 <= finished < 5, f"killed after {finished} rounds; the test needs a kill mid-federation"
    assert (out / ".checkpoints" / "stage-centralized.json").exists()
    assert not (out / "metrics.json").exists()  # nothing final was written by the killed run

    resumed = subprocess.run(_cmd("--resume", str(out)), capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "centralized: restored from checkpoint" in resumed.stdout
    assert f"resuming after round {finished}" in resumed.stdout
    m1, s1 = _results(reference_run)
    m2, s2 = _results(out)
    assert m1 == m2
    pd.testing.assert_frame_equal(s1, s2)
    assert {r["setting"] for r in m1["attacks"]} == {"centralized", "federated"}
    assert not (out / ".checkpoints").exists()
