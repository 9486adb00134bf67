"""``examples/flower_app``: a user's Flower app (its own model, data, partitioning, ServerApp and ClientApp, its
own pyproject.toml) run by ``flwr run`` in simulation from its own files, its server's view recorded by
``fedmia.flower.RecordingStrategy``; then ``fedmia attack`` on the recording.

The `flwr` commands run under the reaper of tests/fl/test_flwr_run.py, which stops exactly the daemons they
leave behind (by PID, never by name). Checked: each recorded update is what that client trains from the
round's recorded global model with the example's own code (so the recording is the server's true view,
partition ids included), the recorded aggregate is FedAvg's example-weighted mean of the updates, and
``fedmia attack`` writes every party's rows.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower_app"
BIN = Path(sys.executable).parent


def _flwr_run_module() -> Any:
    """tests/fl/test_flwr_run.py, for its reaper (loaded by path: tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_flwr_run_reaper", ROOT / "tests" / "fl" / "test_flwr_run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _max_diff(a: Any, b: Any) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.skipif(not (BIN / "flwr").exists(), reason="flwr CLI not installed beside this Python")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reaper uses Linux's PR_SET_CHILD_SUBREAPER")
def test_flower_app_example_runs_and_its_recording_is_attacked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reaper = _flwr_run_module()
    app_dir = tmp_path / "flower_app"  # a copy: flwr run builds the app from its folder
    shutil.copytree(EXAMPLE, app_dir, ignore=shutil.ignore_patterns("__pycache__", "recording"))
    recording = tmp_path / "recording"
    env = reaper.flwr_env(tmp_path)
    flwr = str(BIN / "flwr")
    proc, reaped = reaper.run_reaped(
        [
            [flwr, "federation", "simulation-config", "@none/default", "local", "--num-supernodes", "3"],
            [flwr, "run", ".", "--run-config", f"run-dir='{recording}'", "--stream"],
        ],
        tmp_path / "reaped.json",
        timeout=500,
        cwd=app_dir,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert reaper._gone([r["pid"] for r in reaped]), reaped  # flwr's daemons were stopped, by PID
    # `flwr run` exits 0 even when the simulation fails: the recording says whether it ran
    assert (recording / "fedmia.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]

    from fedmia.flower import read_views

    monkeypatch.syspath_prepend(str(app_dir))  # what the README does with PYTHONPATH
    from flower_app.task import Net, load_data, train

    views = read_views(recording)
    assert [v.server_round for v in views] == [1, 2]
    for view in views:
        assert [u.partition_id for u in view.updates] == [0, 1, 2] and view.sampled == (0, 1, 2)
        assert len({u.node_id for u in view.updates}) == 3
        for u in view.updates:  # the client's own training from the recorded global model gives its update
            net = Net(hidden=32)
            net.load_state_dict(view.global_before)
            x, y = load_data(u.partition_id, 3)
            train(net, x, y, epochs=1, lr=0.1, seed=1000 * view.server_round + u.partition_id)
            assert _max_diff(net.state_dict(), u.state) <= 1e-5
            assert u.num_examples == len(y) == 300
        # FedAvg: the example-weighted mean of the updates (all 300 here)
        mean = {k: sum(u.state[k].double() for u in view.updates) / 3 for k in view.global_before}
        assert view.global_after is not None and _max_diff(mean, view.global_after) <= 1e-6
    final = torch.load(recording / "final_model.pt", weights_only=True)
    assert _max_diff(final, views[-1].global_after) == 0.0

    tiny = ["audit.references=2", "audit.server_references=2", "audit.attacks=[loss]"]
    # `fedmia attack` in this process (a subprocess would import torch and fedmia again, ~10 s), the example's
    # modules importable as they are for the user who runs it beside the app (PYTHONPATH)
    from typer.testing import CliRunner

    from fedmia.experiment.cli import app

    monkeypatch.syspath_prepend(str(app_dir))
    attack = CliRunner().invoke(app, ["attack", str(recording), *tiny, "--out", str(tmp_path / "attack")])
    assert attack.exit_code == 0, attack.output[-3000:]
    metrics = json.loads((tmp_path / "attack" / "metrics.json").read_text())
    parties = {(r["party"], r["attack"]) for r in metrics["attacks"]}
    assert {("outsider", "loss"), ("server", "loss"), ("server", "loss-trajectory"), ("client", "loss")} <= parties
    members = {r["n_members"] for r in metrics["attacks"] if r["party"] == "outsider"}
    assert members == {900}  # the clients' pool: every record of the three partitions
