"""Rule 5, "higher score means member", checked end to end on a deliberately overfit model.

An MLP trained to 100% training accuracy on 150 digits leaks membership; an outsider with 16
reference models (``train_reference_signals``, the same ``train()``) attacks it with every registered
attack. Every attack must beat chance in the member direction, LiRA must beat LOSS at 1% FPR
(the point of reference models), and with a target that never saw any candidate every attack must
be at chance: nothing but the model's outputs may carry membership into a score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedmia.attacks import ATTACKS
from fedmia.audit import evaluate_scores
from fedmia.data import MembershipPlan, load_dataset, make_plan
from fedmia.seeding import derive_seed, torch_generator
from fedmia.signals import Signals
from fedmia.threats import BlackBox, Observation, Outsider
from fedmia.training import ModelSpec, Recipe, Records, train, train_reference_signals

SEED = 0  # also checked while writing: seeds 1, 2, 3 (see the report of the LiRA-vs-LOSS numbers)
N_MEMBERS, N_NONMEMBERS, N_POPULATION = 150, 300, 150  # 300 non-members resolve 1% FPR (3 false positives)
N_REFERENCES = 16
RECIPE = Recipe(epochs=100, batch_size=32, lr=0.05, momentum=0.9)


@dataclasses.dataclass(frozen=True)
class Audit:
    plan: MembershipPlan
    is_member: np.ndarray  # ground truth of the candidates, in scoring order
    observation: Observation  # the overfit target, as the outsider sees it
    null_observation: Observation  # a target trained on records disjoint from every candidate
    train_accuracy: float


@pytest.fixture(scope="module")
def audit() -> Iterator[Audit]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster and leaves the other core alone
    try:
        yield _build_audit()
    finally:
        torch.set_num_threads(threads)


def _build_audit() -> Audit:
    data = load_dataset("digits")
    n = data.n
    plan = make_plan(
        n,
        members=N_MEMBERS / n,
        nonmembers=N_NONMEMBERS / n,
        population=N_POPULATION / n,
        test=N_MEMBERS / n,
        rng=np.random.default_rng(SEED),
    )
    assert (len(plan.members), len(plan.nonmembers), len(plan.test)) == (N_MEMBERS, N_NONMEMBERS, N_MEMBERS)

    def records(idx: np.ndarray) -> Records:
        return data.x[idx], data.y[idx]

    spec = ModelSpec("mlp", data.input_shape, data.num_classes, {"hidden": (512,), "activation": "tanh"})
    target = spec.build(derive_seed(SEED, "target-init"))
    res = train(target, *records(plan.members), RECIPE, generator=torch_generator(SEED, "target"))
    # the null target: same recipe and size, trained on the test split, which no candidate belongs to
    null = spec.build(derive_seed(SEED, "null-init"))
    train(null, *records(plan.test), RECIPE, generator=torch_generator(SEED, "null"))

    def trainer(pool: Records, keep: np.ndarray, eval_sets: Sequence[Records]) -> list[Signals]:
        return train_reference_signals(spec, RECIPE, pool, keep, eval_sets, seed=derive_seed(SEED, "references"))

    candidates, population = records(plan.targets), records(plan.population)
    outsider = Outsider(
        BlackBox(target),
        candidates,
        population,
        n_references=N_REFERENCES,
        trainer=trainer,
        rng=np.random.default_rng(derive_seed(SEED, "outsider")),
        train_size=N_MEMBERS,
    )
    obs = outsider.observe()
    # The null target is attacked with the same references: only the observed model changes.
    null_box = BlackBox(null)
    null_obs = Observation(
        null_box.query(candidates), dataclasses.replace(obs.knowledge, population=null_box.query(population))
    )
    return Audit(plan, plan.is_member(plan.targets), obs, null_obs, res.accuracy)


def scores(observation: Observation, attack: str) -> np.ndarray:
    s = np.asarray(ATTACKS.create(attack).score(observation.target, observation.knowledge), dtype=np.float64)
    assert s.shape == (len(observation.target.labels),)
    assert np.all(np.isfinite(s)), attack
    return s


def test_target_is_overfit(audit: Audit) -> None:
    assert audit.train_accuracy == 1.0
    assert audit.observation.knowledge.references is not None
    assert audit.observation.knowledge.references.loss.shape == (N_REFERENCES, N_MEMBERS + N_NONMEMBERS)


@pytest.mark.parametrize("attack", ATTACKS.available())
def test_every_attack_scores_members_higher(audit: Audit, attack: str) -> None:
    auc = roc_auc_score(audit.is_member, scores(audit.observation, attack))
    assert auc > 0.55, f"{attack}: AUC {auc:.3f}; a flipped sign gives AUC < 0.5"


def test_lira_beats_loss_at_one_percent_fpr(audit: Audit) -> None:
    """Reference models calibrate per-record difficulty: LiRA finds members LOSS cannot at low FPR.

    Seed 0: LiRA-online-fixed 0.100 vs LOSS 0.013 at 1% FPR (seeds 1-3: 0.133/0.027, 0.200/0.020, 0.093/0.040).
    """
    tpr = {
        a: evaluate_scores(scores(audit.observation, a), audit.is_member).tpr_at_fpr["0.01"]
        for a in ("loss", "lira-online-fixed", "lira-online")
    }
    assert tpr["loss"] is not None and tpr["lira-online-fixed"] is not None
    assert tpr["lira-online-fixed"] > 2 * tpr["loss"] + 0.02, tpr
    assert tpr["lira-online"] > tpr["loss"], tpr


@pytest.mark.parametrize("attack", ATTACKS.available())
def test_attacks_at_chance_on_a_target_that_saw_no_candidate(audit: Audit, attack: str) -> None:
    """The plan's membership labels are random with respect to the null target: AUC must be near 0.5.

    This fails if ground truth reaches a score other than through the observed model (the candidate
    order, the references' keep matrix, the population ...).
    """
    auc = roc_auc_score(audit.is_member, scores(audit.null_observation, attack))
    assert abs(auc - 0.5) < 0.07, f"{attack}: AUC {auc:.3f} on a model that saw no candidate"
