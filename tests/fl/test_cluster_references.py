"""References across a Ray cluster: a head and two worker nodes on loopback (``ray start``), stopped by PID.

Oracle: the single-machine path. Reference models (``train_reference_signals``) and reference federations
(``train_reference_federations``) trained as Ray tasks, one batched group per task, equal what the local
loop gives for the same seed and group size, exactly: each task runs the local loop's own group function
on the same group with seeds derived from (seed, k), and torch uses one thread on both sides.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmia.data import load_dataset, reference_keep
from fedmia.fl.cluster import (
    ReferenceTaskError,
    ReferenceTasks,
    cluster_reference_federations,
    cluster_reference_signals,
)
from fedmia.fl.inprocess import train_reference_federations
from fedmia.seeding import rng
from fedmia.signals.release import OutputNoise, QueryInterface
from fedmia.training import ModelSpec, Recipe, train_reference_signals

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("own_ray")]
RAY = Path(sys.executable).with_name("ray")
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], tmp: Path) -> subprocess.Popen[bytes]:
    """One ``ray start --block`` in its own session (process group), fedmia importable by its workers."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [str(RAY), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    log = (tmp / f"start-{len(list(tmp.glob('start-*.log')))}.log").open("wb")
    return subprocess.Popen(cmd + args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _ours(tmp: Path) -> list[int]:
    """PIDs of processes whose command line names our temp dir (the daemons and workers of our nodes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if str(tmp).encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


def _wait_nodes(address: str, n: int, procs: list[subprocess.Popen[bytes]], tmp: Path) -> None:
    """Until the cluster lists ``n`` alive nodes; disconnects again (each test joins by itself)."""
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for p in procs:
                if p.poll() is not None:
                    logs = "\n".join(f.read_text()[-1500:] for f in sorted(tmp.glob("start-*.log")))
                    pytest.fail(f"ray start exited ({p.returncode}):\n{logs}")
            if sum(node["Alive"] for node in ray.nodes()) >= n:
                return
            time.sleep(0.5)
        pytest.fail(f"the cluster did not reach {n} nodes within 60 s")
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head (1 CPU) and two worker nodes (1 CPU each) on 127.0.0.1, in our own temp dir; stopped by PID.

    Never ``ray stop``: it would stop every Ray on this machine, other tests' included."""
    port = _free_port()
    # a short folder of its own under /tmp, not pytest's: Ray puts Unix sockets under each node's temp dir, and
    # pytest-xdist's deeper tmp paths (.../popen-gw0/rayc0/a/session_.../sockets/...) pass the 107-byte limit
    tmp = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))
    address = f"127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_start(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={tmp}"], tmp))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        for name in ("a", "b"):  # a temp dir per node: nodes sharing one would share socket paths
            (tmp / name).mkdir()
            procs.append(_start([f"--address={address}", f"--temp-dir={tmp / name}"], tmp))
        _wait_nodes(address, 3, procs, tmp)
        yield address
    finally:
        for p in procs:  # each --block process leads a group holding its node's daemons and workers
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        time.sleep(1)
        for pid in _ours(tmp):  # stragglers that left the groups (by PID, ours only)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def digits_data():  # type: ignore[no-untyped-def]
    return load_dataset("digits")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The local path with the threads a 1-CPU task uses, so float sums run in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_reference_models_on_the_cluster_equal_the_local_path(cluster: str, digits_data, one_thread) -> None:  # type: ignore[no-untyped-def]
    d = digits_data
    spec = ModelSpec("mlp", d.input_shape, d.num_classes, {"hidden": [16]})
    recipe = Recipe(epochs=2, batch_size=32, lr=0.05)
    pool = (d.x[:300], d.y[:300])
    records = (d.x[200:500], d.y[200:500])  # half in the pool, half not
    eval_sets = [records, records]  # through the noisy interface, then directly
    keep = reference_keep(8, 300, rng(0, "cluster-keep"))
    # a noisy interface: the queries' own seeds (seed, "query", k, j) must follow the reference, not the task
    views = [QueryInterface(layers=(OutputNoise(scale=0.05),)), None]
    options = {"seed": 123, "interface": views, "white_box": True}
    local = train_reference_signals(spec, recipe, pool, keep, eval_sets, group=2, **options)
    placements: list = []
    done: list[int] = []
    tasks = ReferenceTasks(cluster, group=2, num_cpus=1, placements=placements)
    remote = cluster_reference_signals(tasks, spec, recipe, pool, keep, eval_sets, on_model_done=done.append, **options)
    assert len(remote) == len(local) == 2
    for got, want in zip(remote, local, strict=True):
        assert got.loss.shape == (8, len(want.loss[0]))
        for field in ("loss", "probs", "correct", "grad_norm"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    # the references differ from each other, and the noise is there (the equality is not of constants)
    assert np.abs(local[1].loss[0] - local[1].loss[1]).max() > 1e-3
    assert np.abs(local[0].probs - local[1].probs).max() > 1e-3  # the same records, noisy vs direct
    assert sorted(done) == list(range(8))
    assert [(p.first, p.size) for p in placements] == [(0, 2), (2, 2), (4, 2), (6, 2)]
    assert len({p.node_id for p in placements}) >= 2, placements  # spread over the cluster's nodes


def test_reference_federations_on_the_cluster_equal_the_local_path(cluster: str, digits, one_thread) -> None:  # type: ignore[no-untyped-def]
    d = digits  # the toy federation of the Ray tests (conftest)
    spec = d.spec_for(seed=0, rounds=2, per_round=2, recipe=d.recipe())
    used = np.concatenate([*d.partitions, d.test])
    free = np.setdiff1d(np.arange(len(d.y)), used)
    g = np.random.default_rng(3)
    sets, inits = [], []
    for k in range(4):
        chosen = g.permutation(free)[:120]
        sets.append((chosen[:30], chosen[30:70], chosen[70:]))
        inits.append({n: v.detach().clone() for n, v in d.spec.build(50 + k).state_dict().items()})
    local = train_reference_federations(spec, d.x, d.y, sets, initial_states=inits, seed=7, group=2)
    placements: list = []
    tasks = ReferenceTasks(cluster, group=2, num_cpus=1, placements=placements)
    remote = cluster_reference_federations(tasks, spec, d.x, d.y, sets, initial_states=inits, seed=7)
    assert len(remote) == 4
    for got, want in zip(remote, local, strict=True):
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    assert max(float((local[0][n] - local[1][n]).abs().max()) for n in local[0]) > 1e-3  # not constants
    assert [(p.first, p.size) for p in placements] == [(0, 1), (1, 1), (2, 1), (3, 1)]  # 2 // per_round
    assert len({p.node_id for p in placements}) >= 2, placements


def test_a_failing_task_is_reported(cluster: str, digits_data) -> None:  # type: ignore[no-untyped-def]
    d = digits_data
    spec = ModelSpec("mlp", d.input_shape, d.num_classes, {"hidden": [4]})
    keep = np.zeros((2, 50), dtype=bool)  # reference 1 has no training record: train_batched refuses
    keep[0, :10] = True
    with pytest.raises(ReferenceTaskError, match="reference task failed"):
        cluster_reference_signals(
            ReferenceTasks(cluster, group=2), spec, Recipe(epochs=1), (d.x[:50], d.y[:50]), keep, [], seed=0
        )


def _cli(out: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fedmia", "run", str(ROOT / "configs" / "quickstart.yaml")]
    cmd += ["train.epochs=2", "audit.references=4", "audit.reference_group=2", "audit.attacks=[loss,lira-online]"]
    cmd += ["model.params.hidden=[16]", *overrides, "--out", str(out)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def test_a_run_with_ray_address_trains_its_references_on_the_cluster(cluster: str, tmp_path: Path) -> None:
    """``fedmia run`` with ray.address: the outsider's references train as 2 tasks, and every score is the
    local run's (both with one torch thread, as a 1-CPU task has)."""
    import json

    import pandas as pd

    local = _cli(tmp_path / "local")
    remote = _cli(tmp_path / "remote", f"ray.address={cluster}")
    for proc in (local, remote):
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tasks = json.loads((tmp_path / "remote" / "metrics.json").read_text())["reference_tasks"]
    record = tasks["centralized/models"]
    assert (record["calls"], record["tasks"], record["references"]) == (1, 2, 4) and len(record["node_ids"]) >= 1
    assert "reference_tasks" not in json.loads((tmp_path / "local" / "metrics.json").read_text())
    want = pd.read_parquet(tmp_path / "local" / "scores.parquet")
    got = pd.read_parquet(tmp_path / "remote" / "scores.parquet")
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert want.loc[want["attack"] == "lira-online", "score"].nunique() > 100  # reference-calibrated scores
