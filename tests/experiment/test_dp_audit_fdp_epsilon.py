"""``fedmia audit-dp --white-box`` reports the f-DP bound also in eps units, "f-DP ε (as GDP)": each seed's
eps_{mu_LB}(delta) of Mahloujifar et al.'s bound (``fedmia.audit.gdp``, equation (4)), with its own confidence,
beside Steinke et al.'s (eps, delta) bound and the Clopper-Pearson mu_LB, in ``dp_audit.json``, ``dp_audit.md`` and
the figure; the two verdicts stay distinct.

No training: the rows are built from the canary statistics of an exactly mu-GDP game (IN ~ N(mu, 1), OUT ~ N(0, 1),
the model of the full-batch all-iterates statistic), audited by ``fedmia.audit.canaries.audit_scores``, the same
function the CLI calls on a run's statistics. The confidences are hand-computed: 3 seeds at 95% give each seed
1 - 0.05 / 3, and the f-DP bound a quarter of a seed's error, 1 - 0.05 / 12 = 99.58%; the maximum over the seeds
1 - 0.05 / 4 = 98.75% (Bonferroni over seeds).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fedmia.audit.canaries import audit_scores
from fedmia.audit.gdp import epsilon_from_mu, fdp_one_run_bound
from fedmia.experiment.dp_audit import (
    CENTRAL,
    CENTRALIZED,
    calibration_figure,
    seed_confidence,
    white_box_row,
    white_box_table,
)

DELTA = 1e-5


def _runs(mu: float, seeds: int = 3, m: int = 600) -> list[dict[str, object]]:
    per_seed = seed_confidence(0.95, seeds)
    runs = []
    for seed in range(seeds):
        g = np.random.default_rng(seed)
        inc = g.random(m) < 0.5
        s = g.normal(size=m) + mu * inc
        a = audit_scores(
            s, inc, view="all_iterates", mode="honest", delta=DELTA, confidence=per_seed, accountant_epsilon=2.45,
            noise_multiplier=8.0, sample_rate=1.0, steps=20, seed=seed,
        )  # fmt: skip
        # the row's f-DP number is the bound of these very scores, at a quarter of the seed's error
        f = fdp_one_run_bound(s, inc, delta=DELTA, confidence=1 - (1 - per_seed) / 4)
        assert a.fdp.mu_lb == f.mu_lb
        runs.append(a.to_dict())
    return runs


def test_the_row_reports_the_fdp_bound_in_epsilon_units_with_its_confidence() -> None:
    # mu = 1.5 (eps 6.70 at 1e-5, above the claimed 2.45), 600 canaries a seed: measured f-DP mu_LB 0.43, 0.49, 0.47
    # (f-DP eps as GDP 1.69, 1.96, 1.87), Clopper-Pearson 0.92, 0.77, 0.93, Steinke's eps_LB 1.81, 1.96, 1.85
    runs = _runs(1.5)
    row = white_box_row(CENTRALIZED, "all_iterates", "honest", None, runs, 0.95, seed_confidence(0.95, 3))
    mus = [float(r["fdp_mu_lb"]) for r in runs]  # type: ignore[arg-type]
    assert row["fdp_mu_lb"] == mus and all(mu > 0.3 for mu in mus)
    assert row["fdp_epsilon_as_gdp"] == [epsilon_from_mu(mu, DELTA) for mu in mus]
    assert row["fdp_epsilon_as_gdp_max"] == max(row["fdp_epsilon_as_gdp"])
    assert row["cp_mu_lb"] == [r["cp_gdp_mu_lb"] for r in runs]
    assert row["fdp_seed_confidence"] == pytest.approx(1 - 0.05 / 12)
    assert row["fdp_confidence"] == pytest.approx(1 - 0.05 / 4)
    assert "not an (ε, δ) bound" in row["fdp_epsilon_as_gdp_kind"]
    # the (eps, delta) verdict rests on Steinke et al. alone; the Gaussian-DP verdict on the larger mu_LB
    assert row["epsilon_lb"] == [r["steinke_epsilon_lb"] for r in runs]
    assert row["gdp_mu_lb_max"] == max(max(a, b) for a, b in zip(mus, row["cp_mu_lb"], strict=True))
    table = white_box_table([row])
    assert "f-DP ε (as GDP) per seed (confidence each)" in table and "f-DP ε (as GDP) max (confidence)" in table
    eps_cells = ", ".join(f"{e:.2f}" for e in row["fdp_epsilon_as_gdp"])
    assert f"{eps_cells} (99.58%) | {row['fdp_epsilon_as_gdp_max']:.2f} (98.75%)" in table
    assert f"{mus[0]:.2f} / {row['cp_mu_lb'][0]:.2f}" in table
    assert "as Gaussian DP" in row["verdict"] and f"not μ-GDP for μ < {row['gdp_mu_lb_max']:.2f}" in row["verdict"]


def test_a_broken_run_is_refuted_as_gaussian_dp_and_named_by_its_source() -> None:
    # mu = 3 against the claim's mu 0.60 (accountant 2.45): measured f-DP mu_LB 0.90 in each seed (all 300 guesses
    # of k = m/2 right: the bound's cap at 600 canaries; eps as GDP 3.90), Clopper-Pearson 2.25, 2.08, 2.07 (the
    # larger: the verdict names it); Steinke's eps_LB 3.60, 3.31, 3.60 > 2.45
    runs = _runs(3.0)
    row = white_box_row(CENTRALIZED, "all_iterates", "no_noise", None, runs, 0.95, seed_confidence(0.95, 3))
    assert row["gdp_claim_holds"] is False and row["gdp_mu_lb_max"] > row["claimed_mu"]
    assert min(row["fdp_epsilon_as_gdp"]) > row["accountant_epsilon"]
    source = "f-DP bound" if max(row["fdp_mu_lb"]) >= max(row["cp_mu_lb"]) else "Clopper-Pearson GDP bound"
    assert f"({source})" in row["verdict"]
    if not row["claim_holds"]:
        assert row["verdict"].startswith("the claim does not hold: ε ≥")
    else:
        assert row["verdict"].startswith("the claim does not hold as Gaussian DP")


def test_central_dp_rows_have_no_fdp_column_and_the_figure_draws_both(tmp_path: Path) -> None:
    # mu = 0.56, the config's exact mechanism, at 600 canaries: measured f-DP eps as GDP 0.00, 0.32, 0.27
    honest = white_box_row(CENTRALIZED, "all_iterates", "honest", None, _runs(0.56), 0.95, seed_confidence(0.95, 3))
    central_run = {"epsilon_lb": 0.5, "accountant_epsilon": 2.45, "epsilon_estimate": 2.3, "delta": DELTA}
    central = white_box_row(CENTRAL, "final_model", "honest", None, [central_run], 0.95, 0.95)
    assert "fdp_epsilon_as_gdp" not in central and central["gdp_mu_lb"] is None
    lines = white_box_table([honest, central]).splitlines()
    assert lines[-1].count("| - | - |") == 1  # the central row's two f-DP cells
    assert all(math.isfinite(e) and e < 2.45 for e in honest["fdp_epsilon_as_gdp"])  # mu 0.56: under the claim
    path = calibration_figure([honest, central], tmp_path / "dp_audit.png")
    assert path.stat().st_size > 0
