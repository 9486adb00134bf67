"""ray.address: the federation joins an existing Ray cluster (a head started on loopback)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("own_ray")]
RAY = Path(sys.executable).with_name("ray")
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory):
    """A Ray head node on 127.0.0.1 in its own temp dir; stopped by PID (and its group) afterwards."""
    port = _free_port()
    tmp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [
        str(RAY),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--include-dashboard=false",
        f"--temp-dir={tmp}",
        "--disable-usage-stats",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            pytest.fail(f"ray start exited: {proc.stdout.read().decode()[-2000:] if proc.stdout else ''}")
        time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("Ray head did not open its port within 90 s")
    time.sleep(2)  # the GCS accepts connections slightly before the raylet is registered
    yield address, tmp
    os.killpg(proc.pid, signal.SIGTERM)  # --block: the process group holds the head's daemons
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _run(tmp_path: Path, address: str, out: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "fedmia",
        "run",
        str(ROOT / "configs" / "federated.yaml"),
        "settings=[federated]",
        "federation.num_clients=3",
        "federation.rounds=2",
        "federation.local_epochs=1",
        "audit.references=0",
        "audit.attacks=[loss]",
        "audit.federated_attacks=[loss-trajectory]",
        f"ray.address={address}",
        "--out",
        str(tmp_path / out),
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    )


def test_federation_runs_on_an_existing_cluster(ray_head: tuple[str, Path], tmp_path: Path) -> None:
    proc = _run(tmp_path, ray_head[0], "run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["rounds"]["federated"]) == 2
    # the cluster saw our driver: a core-driver log in the head's own session folder (a run that
    # started a private Ray instead would log under its own temp dir, not this one)
    drivers = list((ray_head[1] / "session_latest" / "logs").glob("python-core-driver-*.log"))
    assert drivers, "no driver connected to the head node"


def test_unreachable_cluster_fails_cleanly(tmp_path: Path) -> None:
    proc = _run(tmp_path, f"127.0.0.1:{_free_port()}", "nowhere")
    assert proc.returncode == 2
    assert "no Ray head answers" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "nowhere" / "metrics.json").exists()
