"""``fedmia attack RUN_DIR`` on a federation a user's Flower app recorded (``fedmia.flower.RecordingStrategy``).

Oracle: a user's ServerApp (Flower's FedAvg in the wrapper) run in process on the federation that
``fedmia run`` trains (its plan's clients, its initial model, its clients' training), recorded, then
attacked: every party's scores equal ``fedmia run``'s own on that federation. Bad recordings and metadata
exit 2 naming what is wrong. No Ray, no subprocess (fedmia's in-process grid and typer's CliRunner).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from rich.console import Console
from typer.testing import CliRunner

from fedmia.experiment.cli import app
from fedmia.experiment.config import load_config
from fedmia.experiment.federation import federation_spec, initial_model
from fedmia.experiment.runner import build_context
from fedmia.fl.apps import ServerOutcome, make_client_app
from fedmia.fl.inprocess import ArraySetup, serve_inprocess
from fedmia.flower import RecordingStrategy, describe_recording

CONFIG = "federated"
RUN = [
    "settings=[federated]",
    "data.split={members: 0.1, nonmembers: 0.1, population: 0.1, test: 0.05}",
    "federation.num_clients=3",
    "federation.rounds=2",
    "federation.local_epochs=1",
    "federation.backend=inprocess",
    "model.params={hidden: [16], activation: tanh}",
    "audit.references=2",
    "audit.server_references=2",
    "audit.attacks=[loss]",
    "audit.federated_attacks=[loss-trajectory, grad-cosine]",
]
# what the metadata says about how the clients trained and what to attack (the rest: fedmia.json's clients)
FEDERATION = {"local_epochs": 1, "strategy": "fedavg"}
AUDIT = {
    "references": 2,
    "server_references": 2,
    "attacks": ["loss"],
    "federated_attacks": ["loss-trajectory", "grad-cosine"],
}


def record_user_app(run_dir: Path) -> None:
    """The federation ``fedmia run CONFIG RUN`` trains, run by a user's ServerApp with the recording wrapper."""
    cfg = load_config(CONFIG, RUN)
    ctx = build_context(cfg, Console(quiet=True))
    spec = federation_spec(ctx)
    initial = initial_model(ctx).state_dict()
    setup = ArraySetup(spec, x=ctx.data.x, y=ctx.data.y)
    outcome = ServerOutcome()
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            strategy = RecordingStrategy(
                FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=3), run_dir
            )
            result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=cfg.federation.rounds)
            outcome.final_state = result.arrays.to_torch_state_dict()
        except BaseException as exc:
            outcome.error = exc

    serve_inprocess(spec, server, make_client_app(lambda _context: setup), outcome)
    plan = ctx.plan
    describe_recording(
        run_dir,
        clients=list(plan.clients),
        dataset={"dataset": "digits"},
        model={"name": "mlp", "params": {"hidden": [16], "activation": "tanh"}},
        config={"seed": cfg.seed, "train": cfg.train.model_dump(), "federation": FEDERATION, "audit": AUDIT},
        records={
            "nonmembers": plan.nonmembers,
            "population": plan.population,
            "test": plan.test,
            "candidates": plan.targets,
        },
    )


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("user-app")
    record_user_app(run_dir)
    return run_dir


def scores(run: Path) -> pd.DataFrame:
    frame = pd.read_parquet(run / "scores.parquet")
    return frame.sort_values(list(frame.columns[:4])).reset_index(drop=True)


@pytest.mark.slow
def test_attacking_the_recording_gives_fedmia_runs_scores(recording: Path, tmp_path: Path) -> None:
    ours = CliRunner().invoke(app, ["attack", str(recording), "--out", str(tmp_path / "attack")])
    assert ours.exit_code == 0, ours.output
    theirs = CliRunner().invoke(app, ["run", CONFIG, *RUN, "--out", str(tmp_path / "run")])
    assert theirs.exit_code == 0, theirs.output
    a = json.loads((tmp_path / "attack" / "metrics.json").read_text())
    b = json.loads((tmp_path / "run" / "metrics.json").read_text())
    key = lambda r: (r["party"], r["attack"])  # noqa: E731
    rows_a = {key(r): r for r in a["attacks"]}
    rows_b = {key(r): r for r in b["attacks"] if r["setting"] == "federated"}
    assert {p for p, _ in rows_a} == {"outsider", "server", "client"}
    assert rows_a.keys() == rows_b.keys()
    for k, r in rows_a.items():
        assert (r["n_members"], r["n_nonmembers"]) == (rows_b[k]["n_members"], rows_b[k]["n_nonmembers"]), k
        assert r["auc"] == pytest.approx(rows_b[k]["auc"], abs=1e-6), k
    sa, sb = scores(tmp_path / "attack"), scores(tmp_path / "run")
    sb = sb[sb["setting"] == "federated"].reset_index(drop=True) if "setting" in sb else sb
    assert len(sa) == len(sb)
    np.testing.assert_allclose(sa["score"].to_numpy(), sb["score"].to_numpy(), atol=1e-5)


def copy_of(recording: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "rec"
    shutil.copytree(recording, run_dir, ignore=shutil.ignore_patterns("attack*"))
    return run_dir


def attack(run_dir: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["attack", str(run_dir), *args, "--out", str(run_dir / "out")])


def edit_metadata(run_dir: Path, change: Any) -> None:
    path = run_dir / "fedmia.json"
    tree = json.loads(path.read_text())
    change(tree)
    path.write_text(json.dumps(tree))


def test_a_client_missing_from_the_metadata_exits_2(recording: Path, tmp_path: Path) -> None:
    run_dir = copy_of(recording, tmp_path)
    edit_metadata(run_dir, lambda t: t["records"]["clients"].pop("2"))
    result = attack(run_dir)
    assert result.exit_code == 2
    assert "round-00001: an update from partition 2" in " ".join(result.output.split()), result.output


def test_a_model_that_does_not_fit_exits_2_naming_the_round(recording: Path, tmp_path: Path) -> None:
    run_dir = copy_of(recording, tmp_path)
    result = attack(run_dir, "model.params={hidden: [8], activation: tanh}")
    assert result.exit_code == 2
    assert "round-00001" in result.output and "shape" in result.output, result.output


def test_wrong_client_records_exit_2(recording: Path, tmp_path: Path) -> None:
    """A client given other records than it trained on: its reported example count says so."""
    run_dir = copy_of(recording, tmp_path)
    # one of client 0's records said to be a non-member instead (the candidates stay the same records)
    edit_metadata(run_dir, lambda t: t["records"]["nonmembers"].append(t["records"]["clients"]["0"].pop()))
    result = attack(run_dir)
    assert result.exit_code == 2
    assert "partition 0 reported" in " ".join(result.output.split()), result.output


def test_overlapping_clients_and_missing_rounds_exit_2(recording: Path, tmp_path: Path) -> None:
    run_dir = copy_of(recording, tmp_path)
    edit_metadata(run_dir, lambda t: t["records"]["clients"]["1"].append(t["records"]["clients"]["0"][0]))
    result = attack(run_dir)
    assert result.exit_code == 2 and "each record belongs to one client" in " ".join(result.output.split())

    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(recording / "fedmia.json", empty / "fedmia.json")
    result = attack(empty)
    assert result.exit_code == 2 and "no recorded rounds" in " ".join(result.output.split()), result.output

    rounds = copy_of(recording, tmp_path / "r")
    result = attack(rounds, "federation.rounds=3")
    assert result.exit_code == 2 and "2 recorded rounds" in " ".join(result.output.split()), result.output


def test_a_recording_behind_secure_aggregation_configures_the_secagg_server(recording: Path, tmp_path: Path) -> None:
    """Rounds recorded with secure_aggregation=True (no updates) make the server the secure-aggregation
    server; metadata that claims otherwise exits 2."""
    from fedmia.experiment.attack_recording import read_recording

    run_dir = copy_of(recording, tmp_path)
    for path in sorted((run_dir / ".checkpoints" / "federated").glob("round-*.json")):
        meta = json.loads(path.read_text())
        view = meta["latest"]
        view.update(secure_aggregation=True, updated=[], node_ids=[], num_examples=[], metrics=[])
        path.write_text(json.dumps(meta))
    assert read_recording(run_dir).cfg.federation.secure_aggregation
    edit_metadata(run_dir, lambda t: t["federation"].update(secure_aggregation=False))
    result = attack(run_dir)
    assert result.exit_code == 2 and "behind secure aggregation" in " ".join(result.output.split()), result.output
