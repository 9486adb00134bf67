"""`flwr run .` runs the same federation as `fedmia run` (same per-round global test accuracy)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _flower_daemons() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {
        int(line.split()[0]) for line in out.splitlines() if "flower-superlink" in line or "flower-superexec" in line
    }


@pytest.mark.skipif(not (BIN / "flwr").exists(), reason="flwr CLI not installed beside this Python")
def test_flwr_run_matches_fedmia_run(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HOME": str(tmp_path),  # flwr keeps its config and local SuperLink state under ~/.flwr
    }
    before = _flower_daemons()
    run_config = f"overrides='federation.rounds=2' out='{tmp_path / 'flwr'}'"
    try:
        # Flower 1.41 simulates 2 SuperNodes by default; configs/federated.yaml has 10 clients
        size = subprocess.run(
            [str(BIN / "flwr"), "federation", "simulation-config", "@none/default", "local", "--num-supernodes", "10"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert size.returncode == 0, size.stdout[-2000:] + size.stderr[-2000:]
        proc = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "--run-config", run_config, "--stream"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        for pid in _flower_daemons() - before:  # flwr run leaves its SuperLink and SuperExec running
            os.kill(pid, signal.SIGTERM)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    flwr_rounds = json.loads((tmp_path / "flwr" / "rounds.json").read_text())["rounds"]

    out = tmp_path / "fedmia"
    ref = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedmia",
            "run",
            str(ROOT / "configs/federated.yaml"),
            "settings=[federated]",
            "federation.rounds=2",
            "audit.attacks=[loss]",
            "audit.federated_attacks=[loss-trajectory]",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    fedmia_rounds = json.loads((out / "metrics.json").read_text())["rounds"]["federated"]
    assert [r["round"] for r in flwr_rounds] == [1, 2]
    for a, b in zip(flwr_rounds, fedmia_rounds, strict=True):
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
    shutil.rmtree(tmp_path / ".flwr", ignore_errors=True)
