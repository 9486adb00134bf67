"""Many targets for the parties inside the federation (``audit.targets``; LiRA's evaluation, Carlini et al.
2022, Sec. VI): the server and the client attack the run's federation plus targets-1 further federations.

Oracles: (a) the run's own target keeps exactly the scores it has with ``targets: 1`` (leave-one-out: the
pooled row's first target is that run); (b) each further federation trains exactly the members the audit
counts, partitioned among the clients, with as many members as the run's own, in the paired design; (c) a
target federation observed in process gives the views of the same federation on Flower + Ray (slow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from fedmia.audit import evaluate_scores
from fedmia.data import target_memberships
from fedmia.experiment.config import load_config
from fedmia.experiment.federated import more_target_federations
from fedmia.experiment.federation import federation_spec
from fedmia.experiment.runner import build_context, run_settings

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "federated.yaml"
SMALL = [
    "settings=[federated]",
    "data.split={members: 0.2, nonmembers: 0.2, population: 0.3, test: 0.1}",
    "federation.backend=inprocess",
    "federation.num_clients=3",
    "federation.rounds=2",
    "federation.local_epochs=1",
    "audit.references=4",
    "audit.server_references=2",
    "audit.attacks=[loss, lira-offline-fixed]",
    "audit.federated_attacks=[loss-trajectory, grad-cosine]",
]


def context(*overrides: str) -> Any:
    return build_context(load_config(str(CONFIG), [*SMALL, *overrides]), Console(quiet=True))


@pytest.fixture(scope="module")
def runs() -> dict[int, Any]:
    """The same small federated run with 1 and 3 targets."""
    return {t: run_settings(context(f"audit.targets={t}")) for t in (1, 3)}


def rows(results: Any, party: str) -> dict[str, dict[str, Any]]:
    return {r["attack"]: r for r in results.rows if r["setting"] == "federated" and r["party"] == party}


@pytest.mark.slow  # two small runs: ~8 s idle
@pytest.mark.parametrize("party", ["server", "client"])
def test_the_runs_own_federation_keeps_its_scores_among_many_targets(runs: dict[int, Any], party: str) -> None:
    one, many = rows(runs[1], party), rows(runs[3], party)
    assert one.keys() == many.keys() and one
    for attack, row in many.items():
        assert row["targets"] == 3, attack
        per = row["per_target"]
        assert [p["target"] for p in per] == [0, 1, 2]
        # target 0 is the run's own federation, scored exactly as in the one-target run
        assert per[0]["auc"] == pytest.approx(one[attack]["auc"], abs=1e-12)
        assert per[0]["tpr_at_fpr"] == pytest.approx(one[attack]["tpr_at_fpr"], abs=1e-12)
        # three federations' decisions pooled: about three times the records of the one-target row
        assert row["n_members"] + row["n_nonmembers"] > 2.5 * (one[attack]["n_members"] + one[attack]["n_nonmembers"])
    summary = runs[3].extra["target_federations"]
    assert [s["target"] for s in summary] == [1, 2]
    # trained federations, not initial models: far above chance (0.1; measured 0.49 and 0.48 beside the run's
    # own 0.52 after 2 rounds of 1 local epoch)
    assert all(s["test_accuracy"] > 0.3 for s in summary)


@pytest.mark.slow
def test_pooled_rows_are_the_roc_of_every_targets_scores(runs: dict[int, Any]) -> None:
    """The pooled AUC is the ROC of the concatenated scores, not an average of the targets' AUCs."""
    frame = runs[3].scores_frame()
    sel = frame[(frame["setting"] == "federated") & (frame["party"] == "server") & (frame["attack"] == "loss")]
    row = rows(runs[3], "server")["loss"]
    m = evaluate_scores(sel["score"].to_numpy(), sel["is_member"].to_numpy(bool), intervals=False)
    assert m.auc == pytest.approx(row["auc"], abs=1e-12)
    assert sorted(sel["target"].unique()) == [0, 1, 2]
    # and the pooled AUC is not the mean of the targets' own (they differ: three different federations)
    assert len({round(p["auc"], 9) for p in row["per_target"]}) == 3


def test_each_target_federation_trains_exactly_the_members_the_audit_counts() -> None:
    ctx = context("audit.targets=3")
    records, is_member, _ = ctx.audit_targets()
    targets = list(more_target_federations(ctx, federation_spec(ctx), 2))
    assert len(targets) == 2
    memberships = []
    for t in targets:
        pooled = np.concatenate(t.clients)
        assert len(np.unique(pooled)) == len(pooled)  # every record with one client at most
        assert np.array_equal(np.sort(pooled), np.sort(records[t.is_member]))  # members: what the clients hold
        assert tuple(np.array_equal(a, b) for a, b in zip(t.spec.partitions, t.clients, strict=True)) == (True,) * 3
        assert t.is_member.sum() == is_member.sum()  # as many members as the run's own federation
        assert set(t.latest.local) == {0, 1, 2}  # every client's update was observed
        memberships.append(t.is_member)
    # the paired design: with as many members as non-members the two federations are complementary
    if 2 * is_member.sum() == len(records):
        assert np.array_equal(memberships[0], ~memberships[1])
    else:
        assert (memberships[0] & memberships[1]).sum() < 0.6 * is_member.sum()
    # and neither is the run's own membership
    assert all((m != is_member).any() for m in memberships)


@pytest.mark.parametrize("n,m,count", [(10, 5, 4), (11, 5, 3), (10, 7, 2), (9, 1, 5)])
def test_target_memberships_pairs_have_the_runs_member_count(n: int, m: int, count: int) -> None:
    keep = target_memberships(n, m, count, np.random.default_rng(0))
    assert keep.shape == (count, n)
    assert (keep.sum(axis=1) == m).all()
    for k in range(0, count - 1, 2):
        if 2 * m <= n:  # the pair's two halves of one permutation never overlap
            assert not (keep[k] & keep[k + 1]).any()
        else:  # the second fills up from the first: the overlap is exactly what n cannot hold
            assert (keep[k] & keep[k + 1]).sum() == 2 * m - n
    if 2 * m == n and count % 2 == 0:  # every candidate IN for exactly half the models
        assert (keep.sum(axis=0) == count // 2).all()


def test_target_memberships_refuse_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="n_members"):
        target_memberships(10, 11, 2, np.random.default_rng(0))


@pytest.mark.slow  # four small generator runs
@pytest.mark.parametrize("setting", ["generative-centralized", "generative-federated"])
def test_generative_settings_pool_many_targets_and_keep_their_own(setting: str) -> None:
    """The generative settings train targets-1 further generators (federations in process): every party's
    row pools all of them, and target 0 is scored exactly as with one target."""
    config = CONFIG.parent / "generative.yaml"
    small = [f"settings=[{setting}]", "train.epochs=2", "generative.samples=100", "audit.attacks=[loss]"]
    small += ["federation.rounds=1", "federation.local_epochs=1", "federation.backend=inprocess"]
    small += ["generative.attacks=[dcr, gan-leaks]"]
    got = {}
    for t in (1, 2):
        ctx = build_context(load_config(str(config), [*small, f"audit.targets={t}"]), Console(quiet=True))
        got[t] = {(r["party"], r["attack"]): r for r in run_settings(ctx).rows}
    assert got[1].keys() == got[2].keys() and got[1]
    for key, row in got[2].items():
        assert row["targets"] == 2 and [p["target"] for p in row["per_target"]] == [0, 1], key
        assert row["per_target"][0]["auc"] == pytest.approx(got[1][key]["auc"], abs=1e-12), key
        assert row["n_members"] == 2 * got[1][key]["n_members"], key
    parties = {party for party, _ in got[2]}
    assert parties == (
        {"outsider-samples", "outsider-weights"} | ({"server", "client"} if "federated" in setting else set())
    )


def test_pooling_over_clients_keeps_what_each_attack_chose() -> None:
    """The server's rows pool its clients' scores; RMIA's tuned a (AttackOutcome.info) is kept, once when
    every client's is the same, else per client."""
    from fedmia.experiment.adversaries import _pool
    from fedmia.threats import AttackOutcome

    def out(a: float) -> list[AttackOutcome]:
        return [AttackOutcome("rmia", np.array([0.1, 0.2]), 1.0, info={"a": a}), AttackOutcome("loss", None, 0.0, "no")]

    same = _pool([out(0.3), out(0.3)])
    assert same[0].info == {"a": 0.3} and len(same[0].scores) == 4 and same[0].seconds == 2.0
    assert same[1].scores is None and same[1].skipped == "no"
    assert _pool([out(0.0), out(0.5)])[0].info == {"per_client": [{"a": 0.0}, {"a": 0.5}]}
