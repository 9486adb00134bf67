"""The federated adversaries end to end (`fedmia run`, Ray): who sees more, leaks more.

An overfit 4-client federation: each client's 100 records of a 100-class synthetic "purchase" dataset
(digits is too easy for this: its easiest non-members reach members' loss, and LOSS at 1% FPR reads
noise). The honest-but-curious server attacks each client's own local model, which fits that client's
records perfectly; the outsider sees only the average of the four. So the server must beat the outsider
(same attack, LOSS), must tell which client a member came from far above chance, and under secure
aggregation must fall back to the aggregate: no per-client attacks, no source inference.

Measured while writing (server vs outsider LOSS: TPR at 1% FPR, AUC; source inference accuracy, chance 0.25):
seed 0: 1.00 vs 0.40, 1.000 vs 0.954, 0.998; seed 2: 1.00 vs 0.48, 1.000 vs 0.960, 0.995;
seed 1 (2 rounds): 1.00 vs 0.43, 1.000 vs 0.924, 1.000. Under secure aggregation (seed 0, 2 rounds) the
server's LOSS AUC on the aggregate was 0.923, the outsider's 0.921. On digits (compare.yaml's dataset, 45
records per client) the server's LOSS AUC beat the outsider's too (0.67-0.71 vs 0.57) but its TPR at 1% FPR
did not (0.00-0.02 vs 0.00-0.03).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from fedmia.experiment.cli import app

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SEED = 0
ROUNDS = 3
COMMON = [
    "settings=[federated]",
    f"seed={SEED}",
    "data.dataset=purchase-like",
    "data.params={n: 2000}",
    "data.split={members: 0.2, nonmembers: 0.3, population: 0.3, test: 0.1}",  # 400 members, 600 non-members
    "federation.num_clients=4",
    "federation.local_epochs=20",
    "audit.attacks=[loss]",
    "audit.references=0",
    "audit.server_references=0",
]
CLIENT_ATTACKS = ("fedmia", "fedmia-cosine", "grad-cosine", "grad-difference")  # need one client's own updates


def run(tmp: Path, *overrides: str) -> dict[str, Any]:
    out = tmp / "run"
    result = CliRunner().invoke(
        app, ["run", str(ROOT / "configs" / "compare.yaml"), *COMMON, *overrides, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    metrics: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return metrics


def row(metrics: dict[str, Any], party: str, attack: str) -> dict[str, Any]:
    rows = [r for r in metrics["attacks"] if (r["party"], r["attack"]) == (party, attack)]
    assert len(rows) == 1, (party, attack, rows)
    return rows[0]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run(tmp_path_factory.mktemp("plain"), f"federation.rounds={ROUNDS}")


@pytest.fixture(scope="module")
def secagg(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run(tmp_path_factory.mktemp("secagg"), "federation.rounds=2", "federation.secure_aggregation=true")


def test_the_federation_overfits(plain: dict[str, Any]) -> None:
    util = plain["utility"]["federated"]
    assert util["train_accuracy"] > 0.95 and util["generalization_gap"] > 0.05, util


def test_server_beats_the_outsider(plain: dict[str, Any]) -> None:
    server, outsider = row(plain, "server", "loss"), row(plain, "outsider", "loss")
    assert server["tpr_at_fpr"]["0.01"] > outsider["tpr_at_fpr"]["0.01"] + 0.2, (server, outsider)
    assert server["auc"] > outsider["auc"] + 0.02, (server["auc"], outsider["auc"])
    # the server attacks every client's records against as many non-members, pooled in one ROC
    assert server["n_members"] == server["n_nonmembers"] == 400
    assert server["attacked_clients"] == 4
    assert (outsider["n_members"], outsider["n_nonmembers"]) == (400, 600)


def test_passive_client_attacks_only_the_other_clients_records(plain: dict[str, Any]) -> None:
    client = row(plain, "client", "loss-trajectory")
    assert client["n_members"] == 300 and client["n_nonmembers"] == 600  # its own 100 records are excluded
    assert client["auc"] > 0.6
    skipped = {s["attack"] for s in plain["skipped"] if s["party"] == "client"}
    assert set(CLIENT_ATTACKS) <= skipped  # it sees no client's update, and no other clients' models


def test_source_inference_far_above_chance(plain: dict[str, Any]) -> None:
    si = plain["source_inference"]
    assert si["chance"] == pytest.approx(0.25)
    assert si["n_records"] == 400
    assert si["accuracy"] > si["chance"] + 0.4, si


def test_server_tpr_is_reported_for_every_round(plain: dict[str, Any]) -> None:
    by_round = plain["tpr_at_1pct_by_round"]["server"]
    assert set(CLIENT_ATTACKS) | {"loss-trajectory"} <= set(by_round)
    for attack, series in by_round.items():
        assert len(series) == ROUNDS, (attack, series)
    assert all(v is not None and 0.0 <= v <= 1.0 for v in by_round["loss-trajectory"])
    assert by_round["loss-trajectory"][-1] > 0.5  # the last local models fit their records perfectly


def test_secure_aggregation_leaves_the_server_the_aggregate_only(secagg: dict[str, Any]) -> None:
    parties = {r["party"] for r in secagg["attacks"]}
    assert "secagg-server" in parties and "server" not in parties
    skipped = {s["attack"]: s["why"] for s in secagg["skipped"] if s["party"] == "secagg-server"}
    assert set(CLIENT_ATTACKS) <= set(skipped), skipped
    # what it can still do, it does on the aggregate
    loss, trajectory = row(secagg, "secagg-server", "loss"), row(secagg, "secagg-server", "loss-trajectory")
    assert trajectory["auc"] > 0.5
    # the final aggregate is the outsider's model too: no better than the outsider's LOSS (other non-members)
    assert abs(loss["auc"] - row(secagg, "outsider", "loss")["auc"]) < 0.05
    assert loss["auc"] < 0.99  # unlike a client's local model, the average does not fit every member
    assert "source_inference" not in secagg
    assert "server" not in secagg["tpr_at_1pct_by_round"]
    assert len(secagg["tpr_at_1pct_by_round"]["secagg-server"]["loss-trajectory"]) == 2


def test_matched_nonmembers_are_label_matched_and_never_reused() -> None:
    from fedmia.experiment.adversaries import matched_nonmembers

    clients = [np.array([0, 0, 1]), np.array([1, 2]), np.array([2, 2, 2])]
    pool = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    picks, unmatched = matched_nonmembers(clients, pool, np.random.default_rng(0))
    used = np.concatenate(picks)
    assert len(np.unique(used)) == len(used)  # no non-member scored twice
    for labels, chosen in zip(clients, picks, strict=True):
        assert sorted(pool[chosen]) == sorted(labels)  # same label mix as the client's records
    assert unmatched == 0
    # one label short: the client asks for five 2s, the pool has four; the fifth is filled, and counted
    picks, unmatched = matched_nonmembers([np.array([2, 2, 2, 2, 2])], pool, np.random.default_rng(0))
    assert unmatched == 1 and len(picks[0]) == 5 and (pool[picks[0]] == 2).sum() == 4
