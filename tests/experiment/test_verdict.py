"""The verdict line per (setting, party): oracle cases worked out by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedmia.audit import evaluate_scores
from fedmia.experiment.verdict import best_row, how_to_read, verdict_lines, verdicts


def row(
    setting: str, party: str, attack: str, tpr: float | None, auc: float, n_non: int = 200, n_mem: int = 200
) -> dict[str, Any]:
    return {
        "setting": setting,
        "party": party,
        "attack": attack,
        "auc": auc,
        "tpr_at_fpr": {"0.001": None, "0.01": tpr, "0.1": None},
        "n_members": n_mem,
        "n_nonmembers": n_non,
    }


def test_best_attack_is_the_largest_tpr_at_1pct_not_the_largest_auc() -> None:
    rows = [row("centralized", "outsider", "a", 0.05, 0.90), row("centralized", "outsider", "b", 0.08, 0.55)]
    (v,) = verdicts(rows)
    assert (v.attack, v.tpr, v.auc) == ("b", 0.08, 0.55)


def test_ties_go_to_auc_then_to_the_first_listed() -> None:
    rows = [row("c", "p", "a", 0.05, 0.60), row("c", "p", "b", 0.05, 0.70), row("c", "p", "z", 0.05, 0.70)]
    assert best_row(rows)["attack"] == "b"
    assert best_row(rows[::-1])["attack"] == "z"


def test_unresolvable_sample_says_so_and_names_the_best_auc() -> None:
    rows = [
        row("federated", "client", "a", None, 0.62, n_non=50),
        row("federated", "client", "b", None, 0.70, n_non=50),
    ]
    (v,) = verdicts(rows)
    assert v.attack is None and v.tpr is None and v.ratio is None
    assert v.text == (
        "federated / client: TPR at 1% FPR not resolvable (50 non-members, 100 needed); best AUC 0.700 (b)"
    )


def test_resolvability_follows_the_number_of_nonmembers() -> None:
    # a TPR value on 99 non-members cannot stand for 1% FPR (no false positive allowed); on 100 it can
    assert verdicts([row("c", "p", "a", 0.3, 0.6, n_non=99)])[0].attack is None
    assert verdicts([row("c", "p", "a", 0.3, 0.6, n_non=100)])[0].tpr == 0.3


@pytest.mark.parametrize(
    ("tpr", "n_mem", "comparison", "ratio"),
    [
        (0.084, 200, "2.1× the centralized outsider (0.040)", 2.1),
        (0.020, 200, "below the centralized outsider (0.040; 0.50×)", 0.5),
        (0.0425, 200, "about the same as the centralized outsider (0.040)", 1.0625),  # 0.0025 < 1/200
        (0.0425, 1000, "slightly above the centralized outsider (0.040; 1.06×)", 1.0625),  # 0.0025 > 1/1000
    ],
)
def test_comparison_with_the_centralized_outsider(tpr: float, n_mem: int, comparison: str, ratio: float) -> None:
    rows = [
        row("centralized", "outsider", "loss", 0.040, 0.6, n_mem=1000),
        row("federated", "server", "fedmia", tpr, 0.7, n_mem=n_mem),
    ]
    base, fed = verdicts(rows)
    assert base.comparison == "the baseline for the other parties"
    assert fed.comparison == comparison
    assert fed.ratio == pytest.approx(ratio)
    assert fed.text == f"federated / server: fedmia finds TPR {tpr:.3f} at 1% FPR (AUC 0.700); {comparison}"


def test_no_baseline_or_an_unresolvable_one_gives_no_comparison() -> None:
    (v,) = verdicts([row("federated", "server", "a", 0.1, 0.7)])
    assert v.comparison == "no comparison (the centralized outsider is not in this run)" and v.ratio is None
    _, v = verdicts(
        [row("centralized", "outsider", "a", None, 0.6, n_non=10), row("federated", "server", "a", 0.1, 0.7)]
    )
    assert v.comparison == "no comparison (the centralized outsider's TPR at 1% FPR is not resolvable)"


def test_a_zero_baseline_is_exceeded_without_a_ratio() -> None:
    _, v = verdicts([row("centralized", "outsider", "a", 0.0, 0.5), row("federated", "server", "a", 0.05, 0.7)])
    assert v.comparison == "above the centralized outsider (0.000)" and v.ratio is None


def test_chance_level_is_named_and_a_lone_baseline_says_so() -> None:
    (v,) = verdicts([row("centralized", "outsider", "loss", 0.01, 0.5)])
    assert v.text == (
        "centralized / outsider: loss finds TPR 0.010 at 1% FPR, no better than chance (AUC 0.500); "
        "the baseline (no other party in this run)"
    )


def test_one_line_per_setting_and_party_in_first_seen_order() -> None:
    rows = [
        row("federated", "server", "a", 0.1, 0.7),
        row("centralized", "outsider", "a", 0.05, 0.6),
        row("federated", "server", "b", 0.2, 0.7),
        row("federated", "client", "a", 0.02, 0.6),
    ]
    assert [(v.setting, v.party, v.attack) for v in verdicts(rows)] == [
        ("federated", "server", "b"),
        ("centralized", "outsider", "a"),
        ("federated", "client", "a"),
    ]
    assert verdicts(rows)[0].comparison == "4.0× the centralized outsider (0.050)"
    assert verdict_lines([]) == ["no attack ran, so there is no verdict"]


def test_verdict_from_metrics_of_scores_built_by_hand() -> None:
    """100 non-members score 0..99; of 100 members, k score above every non-member and the rest below
    all of them. At 1% FPR (one false positive allowed) the TPR is k/100: 0.10 for the server's attack,
    0.04 for the centralized outsider's best, so the server is 2.5× it."""

    def metrics(k: int) -> dict[str, Any]:
        scores = np.concatenate([np.arange(100.0), 1000.0 + np.arange(k), -1.0 - np.arange(100 - k)])
        is_member = np.r_[np.zeros(100, bool), np.ones(100, bool)]
        return evaluate_scores(scores, is_member).to_dict()

    rows = [
        {"setting": "centralized", "party": "outsider", "attack": "loss", **metrics(2)},
        {"setting": "centralized", "party": "outsider", "attack": "lira", **metrics(4)},
        {"setting": "federated", "party": "server", "attack": "fedmia", **metrics(10)},
    ]
    assert [r["tpr_at_fpr"]["0.01"] for r in rows] == [0.02, 0.04, 0.10]
    base, server = verdicts(rows)
    assert (base.attack, base.tpr) == ("lira", 0.04)
    assert server.text.startswith("federated / server: fedmia finds TPR 0.100 at 1% FPR (AUC ")
    assert server.text.endswith("; 2.5× the centralized outsider (0.040)")


def test_how_to_read_counts_the_records_1pct_fpr_allows() -> None:
    assert how_to_read([539, 539])[2] == (
        "At 1% FPR the attack wrongly accuses 1 non-member in 100: at most 5 of the 539 non-members attacked; so "
        "few records make the TPR there noisy, and the best of several attacks, picked after the fact, is an "
        "optimistic estimate."
    )
    assert "at most 2 to 5 of the 200 to 539 non-members attacked; so few" in how_to_read([539, 200])[2]
    assert how_to_read([50_000])[2].endswith("at most 500 of the 50000 non-members attacked.")
    assert any("Carlini et al." in s and "First Principles" in s for s in how_to_read([]))
