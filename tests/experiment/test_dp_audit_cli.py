"""``fedmia audit-dp``: bad input exits 2 before anything trains; a tiny run writes the table and the json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmia.experiment.cli import app

pytestmark = pytest.mark.usefixtures("shared_ray")

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "dp_audit.yaml"
TINY = ["train.epochs=1", "federation.rounds=1", "federation.local_epochs=1", "federation.num_clients=2"]


def invoke(*args: str | Path) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["audit-dp", *map(str, args)])
    return r.exit_code, "".join(r.output.split())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([REPO / "configs" / "quickstart.yaml"], "noDPsetting"),  # nothing to audit
        ([CONFIG, "--canaries", "100000"], "--canaries100000"),  # more canaries than population records
        ([CONFIG, "--canaries", "1"], "atleast2"),
        ([CONFIG, "--seeds", "0"], "--seeds"),
        ([CONFIG, "train.dp.noise_multiplier=-1"], "train.dp.noise_multiplier"),
        ([CONFIG, "settings=[federated]", "federation.local_dp=null",
          "federation.central_dp={clipping: server-adaptive, noise_multiplier: 0.1}"], "fixedclipping"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str | Path], needle: str) -> None:
    out = tmp_path / "out"
    code, text = invoke(*args, "--out", out)
    assert code == 2, text
    assert needle in text
    assert not out.exists()


def test_tiny_audit_writes_json_and_table(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    code, text = invoke(CONFIG, "settings=[centralized]", *TINY, "--canaries", "40", "--seeds", "2", "--out", out)
    assert code == 0, text
    doc = json.loads((out / "dp_audit.json").read_text())
    (row,) = doc["settings"]
    assert row["setting"] == "centralized DP-SGD" and row["delta"] == 1e-5 and row["confidence"] == 0.95
    assert len(row["epsilon_lb"]) == 2 and row["epsilon_lb_max"] == max(row["epsilon_lb"])
    assert all(0 <= e <= row["accountant_epsilon"] for e in row["epsilon_lb"])
    assert [r["m"] for r in row["runs"]] == [40, 40]
    table = (out / "dp_audit.md").read_text()
    assert "| centralized DP-SGD |" in table and "accountant ε" in table
