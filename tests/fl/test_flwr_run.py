"""`flwr run .` runs the same federation as `fedmia run` (same per-round global test accuracy).

`flwr` on the local SuperLink starts `flower-superlink` detached (a session of its own), which starts
`flower-superexec` the same way, and leaves both running when it exits. The test stops exactly those: the
`flwr` commands run under a small reaper process (``REAPER``) that makes itself a child subreaper
(Linux ``prctl(PR_SET_CHILD_SUBREAPER)``), so every process they leave behind is re-parented to it
instead of to init; when the commands end (or the test stops the reaper with SIGTERM) it terminates
every process still below it, by PID, and reports them. Both commands run under one reaper: the SuperLink
keeps the simulation config of the first in memory for the second. Nothing is found or killed by name: another
user's `flower-superlink` on the same machine is left alone (``test_reaper_stops_only_what_it_started``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LINUX = sys.platform.startswith("linux")

REAPER = r"""
import ctypes, json, signal, subprocess, sys
import psutil

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>: orphaned descendants are re-parented here, not to init
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped by the test: still clean up
report, commands = sys.argv[1], json.loads(sys.argv[2])
rc = 1
try:
    for command in commands:  # in turn, up to the first that fails
        rc = subprocess.call(command)
        if rc != 0:
            break
finally:
    left = psutil.Process().children(recursive=True)  # all started (transitively) by the command
    reaped = []
    for p in left:
        try:
            reaped.append({"pid": p.pid, "name": p.name(), "cmdline": p.cmdline()})
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(left, timeout=20)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)
    with open(report, "w") as f:
        json.dump(reaped, f)
sys.exit(rc)
"""


def flwr_env(home: Path) -> dict[str, str]:
    """The environment of a `flwr` command: this Python's scripts first, no runtime installs or telemetry, and
    ``home`` as HOME (flwr keeps its config and local SuperLink state under ~/.flwr)."""
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HOME": str(home),
    }


def run_reaped(
    commands: list[list[str]], report: Path, *, timeout: float, **kwargs: Any
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run ``commands`` in turn under one reaper (up to the first that fails): their output and that one's
    exit status, and the processes they left running, which the reaper stopped (pid, name, cmdline). On a
    timeout the reaper is told to stop (it cleans up first)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", REAPER, str(report), json.dumps(commands)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"{commands} timed out after {timeout} s: {out[-2000:]}{err[-2000:]}")
    reaped = json.loads(report.read_text()) if report.exists() else None
    assert reaped is not None, f"the reaper reported nothing: {err[-2000:]}"
    return subprocess.CompletedProcess(commands, proc.returncode, out, err), reaped


def _gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.1)
    return False


def start_decoy(delay: float) -> subprocess.Popen[bytes]:
    """A `flower-superlink` this test does not start through `flwr` (someone else's, on a shared machine),
    named so only after ``delay`` seconds (its arguments never spell the name before: a scan of the
    process table by name at the start of the test would not see it)."""
    rename = f'sleep {delay}; n=flower-; exec -a "${{n}}superlink" sleep 900'
    return subprocess.Popen(["bash", "-c", rename], start_new_session=True)


def is_named_superlink(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None and psutil.Process(proc.pid).cmdline()[:1] == ["flower-superlink"]


@pytest.fixture
def decoy() -> Iterator[subprocess.Popen[bytes]]:
    """A decoy that takes its name 3 s into the test, while `flwr` runs; it must survive. Stopped afterwards
    by its PID."""
    proc = start_decoy(delay=3.0)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.skipif(not LINUX, reason="the reaper uses Linux's PR_SET_CHILD_SUBREAPER")
def test_reaper_stops_only_what_it_started(tmp_path: Path) -> None:
    """A command that leaves a detached `flower-superlink` behind (new session, parent gone, as `flwr`
    does): the reaper stops that one, by PID, and not the decoy of the same name."""
    decoy = start_decoy(delay=0.0)
    try:
        deadline = time.monotonic() + 30
        while not is_named_superlink(decoy) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_named_superlink(decoy)
        daemon = (
            "setsid bash -c 'exec -a flower-superlink sleep 900' </dev/null >/dev/null 2>&1 & pid=$!; "
            "until ps -o args= -p $pid | grep -q '^flower-superlink'; do sleep 0.05; done; echo $pid"
        )
        done, reaped = run_reaped([["bash", "-c", daemon]], tmp_path / "reaped.json", timeout=60)
        assert done.returncode == 0, done.stderr
        started = int(done.stdout.split()[-1])
        assert [r["pid"] for r in reaped] == [started], reaped
        assert reaped[0]["cmdline"][0] == "flower-superlink", reaped
        assert _gone([started]), "the daemon the command left was not stopped"
        assert is_named_superlink(decoy), "the reaper killed a flower-superlink it did not start"
    finally:
        decoy.kill()
        decoy.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.skipif(not (BIN / "flwr").exists(), reason="flwr CLI not installed beside this Python")
@pytest.mark.skipif(not LINUX, reason="the reaper uses Linux's PR_SET_CHILD_SUBREAPER")
def test_flwr_run_matches_fedmia_run(tmp_path: Path, decoy: subprocess.Popen[bytes]) -> None:
    env = flwr_env(tmp_path)
    # 3 of configs/federated.yaml's 10 clients: the same code path, a third of the training (one SuperNode a client)
    run_config = f"overrides='federation.rounds=2 federation.num_clients=3' out='{tmp_path / 'flwr'}'"
    flwr = str(BIN / "flwr")
    proc, reaped = run_reaped(
        [
            # Flower 1.41 simulates 2 SuperNodes by default: one a client
            [flwr, "federation", "simulation-config", "@none/default", "local", "--num-supernodes", "3"],
            [flwr, "run", ".", "--run-config", run_config, "--stream"],
        ],
        tmp_path / "reaped.json",
        timeout=500,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # flwr left its daemons running; the reaper stopped them (and only them: the decoy lives)
    assert any("flower-superlink" in " ".join(r["cmdline"]) for r in reaped), reaped
    assert _gone([r["pid"] for r in reaped]), reaped
    assert is_named_superlink(decoy), "a flower-superlink the test did not start was killed"
    # `flwr run` exits 0 even when the simulation fails: its output says so
    assert (tmp_path / "flwr" / "rounds.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    flwr_rounds = json.loads((tmp_path / "flwr" / "rounds.json").read_text())["rounds"]

    # fedmia run's own federation, in this process (its views equal the Ray run's: tests/fl/test_inprocess.py)
    from typer.testing import CliRunner

    from fedmia.experiment.cli import app

    out = tmp_path / "fedmia"
    ref = CliRunner().invoke(
        app,
        [
            "run",
            str(ROOT / "configs/federated.yaml"),
            "settings=[federated]",
            "federation.rounds=2",
            "federation.num_clients=3",
            "federation.backend=inprocess",
            "audit.attacks=[loss]",
            "audit.federated_attacks=[loss-trajectory]",
            "--out",
            str(out),
        ],
    )
    assert ref.exit_code == 0, ref.output[-3000:]
    fedmia_rounds = json.loads((out / "metrics.json").read_text())["rounds"]["federated"]
    assert [r["round"] for r in flwr_rounds] == [1, 2]
    for a, b in zip(flwr_rounds, fedmia_rounds, strict=True):
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6)
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
    shutil.rmtree(tmp_path / ".flwr", ignore_errors=True)
