"""The named studies in simulations/: every config and every point of its sweep grid validates (load only,
nothing trains), each is documented in docs/studies.md, and the DP study's central noise multipliers
spend the same epsilons as its local-DP targets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from fedmia.experiment.config import load_config
from fedmia.experiment.sweep import plan_points
from fedmia.fl.accounting import central_epsilon

REPO = Path(__file__).resolve().parents[2]
STUDIES = sorted((REPO / "simulations").glob("*.yaml"))


def test_there_are_named_studies() -> None:
    assert {"classes", "records_per_class", "clients", "dirichlet", "dp_local", "dp_central"} <= {
        s.stem for s in STUDIES
    }


@pytest.mark.parametrize("study", STUDIES, ids=[s.stem for s in STUDIES])
def test_every_study_and_each_sweep_point_validates(study: Path) -> None:
    cfg = load_config(study)
    assert cfg.sweep.grid, f"{study.name} is run with fedmia sweep and needs a sweep.grid"
    points = plan_points(study, [], [])
    n_points = 1
    for values in cfg.sweep.grid.values():
        n_points *= len(values)
    assert len(points) == n_points
    assert len({p.dirname for p in points}) == len(points)  # each point has its own directory


@pytest.mark.parametrize("study", STUDIES, ids=[s.stem for s in STUDIES])
def test_every_study_is_documented_with_its_command(study: Path) -> None:
    doc = (REPO / "docs" / "studies.md").read_text()
    assert f"fedmia sweep simulations/{study.name}" in doc


def test_classes_study_keeps_records_per_class_fixed_and_records_study_keeps_classes_fixed() -> None:
    classes = [p.cfg.data.params for p in plan_points(REPO / "simulations" / "classes.yaml", [], [])]
    assert [c["classes"] for c in classes] == [2, 10, 20, 50, 100]
    assert len({c["n"] // c["classes"] for c in classes}) == 1
    records = [p.cfg.data.params for p in plan_points(REPO / "simulations" / "records_per_class.yaml", [], [])]
    assert len({c["classes"] for c in records}) == 1
    per_class = [c["n"] // c["classes"] for c in records]
    assert per_class == sorted(per_class) and len(set(per_class)) == len(per_class)


def test_dp_study_matches_central_and_local_epsilon() -> None:
    """Local DP: each client's Opacus RDP accountant after 5 rounds x 8 epochs at sample rate 1/2 (54 records,
    batch 32: 80 steps); central DP: Flower's accountant after 5 rounds. Both must give 2, 8, 32."""
    local = plan_points(REPO / "simulations" / "dp_local.yaml", [], [])
    central = plan_points(REPO / "simulations" / "dp_central.yaml", [], [])
    local_eps = []
    for p in local:
        fed, ldp = p.cfg.federation, p.cfg.federation.local_dp
        assert ldp is not None and ldp.noise_multiplier is not None and fed.central_dp is None
        per_client = 539 // fed.num_clients  # digits' 30% members, split IID
        rate = 1 / math.ceil(per_client / p.cfg.train.batch_size)
        steps = fed.rounds * fed.local_epochs * math.ceil(per_client / p.cfg.train.batch_size)
        accountant = RDPAccountant()
        accountant.history = [(ldp.noise_multiplier, rate, steps)]
        local_eps.append(accountant.get_epsilon(ldp.delta))
    central_eps = []
    for p in central:
        fed, cdp = p.cfg.federation, p.cfg.federation.central_dp
        assert cdp is not None and fed.local_dp is None
        central_eps.append(
            central_epsilon(cdp.noise_multiplier, fed.rounds, fed.num_clients, fed.sampled_per_round(), cdp.delta)
        )
        # the rest of the federation is the same in both halves
        assert (fed.num_clients, fed.rounds, fed.local_epochs) == tuple(
            getattr(local[0].cfg.federation, k) for k in ("num_clients", "rounds", "local_epochs")
        )
    assert central_eps == pytest.approx([2.0, 8.0, 32.0], rel=1e-3)
    assert local_eps == pytest.approx([2.0, 8.0, 32.0], rel=1e-2)  # Opacus calibrates to within 1%
