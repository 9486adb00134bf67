"""``fedmia audit-dp``: bad input exits 2 before anything trains; an audit writes the table and the json,
stays at or below the accountant's epsilon under DP, and exceeds it when training claims sigma = 1 but adds
no noise.

No test here needs Ray: bad input exits before anything runs, and the audits train in this process
(``train()`` for centralized DP-SGD; ``federation.backend=inprocess`` keeps any federation in process too).

The old run (40 canaries, guess pairs (2, 2), (4, 4), (8, 8) at level 0.05/3 each) could reach at most
1.23 (all 16 guesses of its best pair right), below its accountant's epsilon (~3.4, one epoch of
digits at q ~ 1/9): its check "epsilon_LB <= accountant epsilon" could not fail. Here (``POWERED``):
purchase-like records (n = 3000; 102 members, 201 population records, 200 of them canaries), a 256-unit
MLP, DP-SGD with batch 2 (q = 1/len(loader) ~ 0.01) for 3 epochs (~300 steps): Opacus' RDP accountant
(Mironov, Talwar & Zhang 2019; Balle et al. 2020, Thm. 21) claims 1.43-1.44 for sigma = 1. The CLI's
guess pairs m/20, m/10, m/5 = (10, 10), (20, 20), (40, 40), each at level 0.05/3 (Bonferroni), reach at
most 2.94 by Steinke, Nasr & Jagielski 2023's bound (``fedmia.audit.one_run.one_run_epsilon``: all 80
guesses right; 79: 2.53; 78: 2.27; 77: 2.07). Without noise the two seeds give 2.06 (77 of 80) and
2.53 (79 of 80); with noise, 0. The audits' power over more seeds is in tests/audit/test_one_run_training.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import opacus.optimizers.optimizer as opacus_optimizer
import pytest
import torch
from typer.testing import CliRunner

from fedmia.audit.one_run import one_run_epsilon
from fedmia.experiment.cli import app

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "dp_audit.yaml"
POWERED = [
    "settings=[centralized]", "federation.backend=inprocess", "data.dataset=purchase-like", "data.params={n: 3000}",
    "data.split={members: 0.034, nonmembers: 0.1, population: 0.067, test: 0.1}",
    "model.params={hidden: [256], activation: tanh}", "train.epochs=3", "train.batch_size=2", "train.lr=0.3",
    "--canaries", "200", "--seeds", "2",
]  # fmt: skip
CLAIMED_MAX, REACHABLE_MAX = 1.45, 2.937  # Opacus' epsilon on both seeds; one_run_epsilon(200, 80, 80) at 0.05/3


def invoke(*args: str | Path) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["audit-dp", *map(str, args)])
    return r.exit_code, "".join(r.output.split())


def audit(out: Path) -> dict[str, Any]:
    code, text = invoke(CONFIG, *POWERED, "--out", out)
    assert code == 0, text
    (row,) = json.loads((out / "dp_audit.json").read_text())["settings"]
    assert [r["m"] for r in row["runs"]] == [200, 200]
    return row


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


def test_the_audit_can_exceed_the_claim() -> None:
    c = 1 - 0.05 / 3
    assert one_run_epsilon(200, 80, 80, delta=1e-5, confidence=c) == pytest.approx(REACHABLE_MAX, abs=1e-3)
    assert one_run_epsilon(200, 80, 77, delta=1e-5, confidence=c) > CLAIMED_MAX + 0.6
    assert one_run_epsilon(40, 16, 16, delta=1e-5, confidence=c) < 1.25  # the old 40-canary run's most


def test_audit_writes_json_and_table(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    row = audit(out)
    assert row["setting"] == "centralized DP-SGD" and row["delta"] == 1e-5 and row["confidence"] == 0.95
    assert len(row["epsilon_lb"]) == 2 and row["epsilon_lb_max"] == max(row["epsilon_lb"])
    assert all(0 <= r["epsilon_lb"] <= r["accountant_epsilon"] <= CLAIMED_MAX for r in row["runs"])
    table = (out / "dp_audit.md").read_text()
    assert "| centralized DP-SGD |" in table and "accountant ε" in table


def test_audit_catches_training_without_noise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opacus' DP optimizer draws its noise N(0, (sigma C)^2) through ``_generate_noise``; here it is zero,
    while the optimizer's noise multiplier, which the accountant records, stays sigma = 1."""
    stds: list[float] = []

    def zero_noise(std: float, reference: torch.Tensor, generator: object = None, secure_mode: bool = False) -> Any:
        stds.append(std)
        return torch.zeros_like(reference)

    monkeypatch.setattr(opacus_optimizer, "_generate_noise", zero_noise)
    row = audit(tmp_path / "audit")
    assert all(r["accountant_epsilon"] < r["epsilon_lb"] <= REACHABLE_MAX + 1e-3 for r in row["runs"]), row["runs"]
    assert max(r["accountant_epsilon"] for r in row["runs"]) <= CLAIMED_MAX
    assert stds and set(stds) == {1.0}
