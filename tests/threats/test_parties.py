"""Each party gets its own view and nothing else; no scoring code ever receives membership ground truth.

A hand-built two-round federation (no Ray) of 4 clients: round 1 samples clients 0, 1, 2; round 2
samples 0 and 1; client 3 never reports. The real observers reduce its RoundViews; every expected
number is recomputed here from the RoundViews' models directly, not from the observers' arrays.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import pkgutil
import re
from dataclasses import fields
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import fedmia.threats
from fedmia.attacks import ATTACKS, Knowledge, RoundAttack, RoundSignals
from fedmia.fl.observe import GradientObserver, LatestModels, SignalObserver, Trajectory, mean_state
from fedmia.fl.views import ClientUpdate, RoundView
from fedmia.signals import Signals, compute_signals, signals_from_logits
from fedmia.threats import Observation, Outsider, reference_knowledge, run_attacks
from fedmia.threats.federated import Client, SecAggServer, Server, ServerView
from fedmia.training import ModelSpec

NUM_CLIENTS = 4
SAMPLED = ((0, 1, 2), (0, 1))  # per round; client 3 never sampled
N_CANDIDATES = 20
SPEC = ModelSpec("mlp", (6,), 3, {"hidden": [8]})


@dataclasses.dataclass
class Federation:
    views: list[RoundView]
    candidates: tuple[np.ndarray, np.ndarray]
    population: tuple[np.ndarray, np.ndarray]
    trajectory: Trajectory
    gradients: GradientObserver
    latest: LatestModels

    def loss_of(self, state: Any, idx: np.ndarray | None = None) -> np.ndarray:
        model = SPEC.build(0)
        model.load_state_dict(state)
        x, y = self.candidates
        sel = slice(None) if idx is None else idx
        return compute_signals(model, x[sel], y[sel]).loss

    def local(self, r: int, c: int) -> Any:
        """Client c's local model of round index r, or None if it was not sampled."""
        return next((u.state for u in self.views[r].updates if u.partition_id == c), None)


@pytest.fixture(scope="module")
def fed() -> Federation:
    rng = np.random.default_rng(0)
    candidates = (rng.normal(size=(N_CANDIDATES, 6)).astype(np.float32), rng.integers(0, 3, N_CANDIDATES))
    population = (rng.normal(size=(10, 6)).astype(np.float32), rng.integers(0, 3, 10))
    gen = torch.Generator().manual_seed(0)
    state = {k: v.detach().clone() for k, v in SPEC.build(0).state_dict().items()}
    signals = SignalObserver(SPEC, candidates, NUM_CLIENTS)
    gradients = GradientObserver(SPEC, candidates, NUM_CLIENTS)
    latest = LatestModels()
    views = []
    for r, sampled in enumerate(SAMPLED, start=1):
        updates = tuple(
            ClientUpdate(c, {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in state.items()}, 10 + c, {})
            for c in sampled
        )
        after = mean_state([u.state for u in updates], [u.num_examples for u in updates])
        view = RoundView(r, state, after, sampled, updates)
        for obs in (signals, gradients, latest):
            obs.on_round(view)
        views.append(view)
        state = after
    return Federation(views, candidates, population, signals.trajectory, gradients, latest)


def final_signals(fed: Federation) -> Signals:
    model = SPEC.build(0)
    model.load_state_dict(fed.views[-1].global_after)
    return compute_signals(model, *fed.candidates)


IDX = np.array([3, 0, 17, 8, 11, 5])  # an arbitrary order of a subset of the candidates


# --- the passive client -----------------------------------------------------------------------------


def test_client_constructor_takes_no_per_client_view() -> None:
    params = list(inspect.signature(Client.__init__).parameters)
    assert params == ["self", "trajectory", "received", "final_model", "outsider"]


ALL_ROUNDS = [1, 2]


def test_client_sees_the_global_models_it_received_and_nothing_else(fed: Federation) -> None:
    obs = Client(fed.trajectory, ALL_ROUNDS, final_signals(fed)).observe(IDX)
    kn = obs.knowledge
    assert kn.available() == {"rounds"}  # no others, no references, no population, no keep
    assert kn.others is None and kn.references is None and kn.keep is None
    assert kn.rounds is not None and kn.rounds.grad_cosine is None and kn.rounds.grad_difference is None
    received = [v.global_before for v in fed.views] + [fed.views[-1].global_after]  # rounds 1..R, then the final
    expected = np.stack([fed.loss_of(s, IDX) for s in received])
    assert kn.rounds.loss.shape == (len(SAMPLED) + 1, len(IDX))
    np.testing.assert_allclose(kn.rounds.loss, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(obs.target.loss, fed.loss_of(fed.views[-1].global_after, IDX), rtol=1e-6)


def test_client_sampled_in_half_the_rounds_sees_only_those(fed: Federation) -> None:
    """Fraction 0.5: a client sampled in round 2 only received round 2's global model (and the final)."""
    obs = Client(fed.trajectory, [2], final_signals(fed)).observe(IDX)
    assert obs.knowledge.rounds is not None
    expected = np.stack([fed.loss_of(fed.views[1].global_before, IDX), fed.loss_of(fed.views[-1].global_after, IDX)])
    np.testing.assert_allclose(obs.knowledge.rounds.loss, expected, rtol=1e-5, atol=1e-6)


def test_client_holds_the_outsiders_knowledge_on_its_candidates(fed: Federation) -> None:
    """It is an outsider too: the outsider's references (restricted to its candidates) are its own."""
    rng = np.random.default_rng(5)
    k = 4
    refs = signals_from_logits(
        torch.tensor(rng.normal(size=(k, N_CANDIDATES, 3)), dtype=torch.float32), fed.candidates[1]
    )
    keep = rng.random((k, N_CANDIDATES)) < 0.5
    outsider = Knowledge(references=refs, keep=keep, population=final_signals(fed))
    obs = Client(fed.trajectory, ALL_ROUNDS, final_signals(fed), outsider).observe(IDX)
    kn = obs.knowledge
    assert kn.references is not None and kn.keep is not None
    np.testing.assert_array_equal(kn.keep, keep[:, IDX])
    np.testing.assert_array_equal(kn.references.loss, refs.loss[:, IDX])
    assert kn.population is outsider.population


def test_client_observation_does_not_depend_on_other_clients_updates(fed: Federation) -> None:
    """A trajectory stripped of every per-client array gives the very same observation, and the party
    keeps no per-client (R, C, n) array nor the trajectory itself."""
    full = Client(fed.trajectory, ALL_ROUNDS, final_signals(fed))
    stripped = Client(dataclasses.replace(fed.trajectory, clients={}), ALL_ROUNDS, final_signals(fed))
    a, b = full.observe(IDX), stripped.observe(IDX)
    assert a.knowledge.rounds is not None and b.knowledge.rounds is not None
    np.testing.assert_array_equal(a.knowledge.rounds.loss, b.knowledge.rounds.loss)
    np.testing.assert_array_equal(a.target.loss, b.target.loss)
    held = list(vars(full).values())
    held += [v for d in held if isinstance(d, dict) for v in d.values()]
    assert not any(isinstance(v, Trajectory) for v in held)
    assert not any(isinstance(v, np.ndarray) and v.ndim >= 3 for v in held)


# --- the server and the secure-aggregation server --------------------------------------------------


def server(fed: Federation) -> Server:
    view = ServerView(fed.trajectory, fed.gradients, fed.latest)
    return Server(
        view,
        SPEC,
        fed.candidates,
        fed.population,
        n_references=0,
        trainer_from=None,
        rng=np.random.default_rng(0),
    )


@pytest.mark.parametrize("c", [0, 2])
def test_server_attacks_a_client_from_that_clients_own_updates(fed: Federation, c: int) -> None:
    obs = server(fed).observe(c, IDX, train_size=3)
    assert obs is not None
    rounds, others = obs.knowledge.rounds, obs.knowledge.others
    assert rounds is not None and others is not None
    for r in range(len(SAMPLED)):
        state = fed.local(r, c)
        if state is None:  # client 2 skipped round 2: unobserved, NaN
            assert np.isnan(rounds.loss[r]).all() and np.isnan(rounds.grad_cosine[r]).all()
        else:
            np.testing.assert_allclose(rounds.loss[r], fed.loss_of(state, IDX), rtol=1e-5, atol=1e-6)
        # the other clients' models, never c's own
        rest = [k for k in range(NUM_CLIENTS) if k != c]
        assert others.loss.shape == (len(SAMPLED), NUM_CLIENTS - 1, len(IDX))
        for j, k in enumerate(rest):
            other = fed.local(r, k)
            if other is None:
                assert np.isnan(others.loss[r, j]).all()
            else:
                np.testing.assert_allclose(others.loss[r, j], fed.loss_of(other, IDX), rtol=1e-5, atol=1e-6)
    # the single-model attacks read c's most recent local model
    last = max(r for r in range(len(SAMPLED)) if fed.local(r, c) is not None)
    np.testing.assert_allclose(obs.target.loss, fed.loss_of(fed.local(last, c), IDX), rtol=1e-6)


def test_server_has_nothing_on_a_client_that_never_reported(fed: Federation) -> None:
    assert server(fed).observe(3, IDX, train_size=3) is None


def test_secagg_server_sees_only_the_aggregates(fed: Federation) -> None:
    view = ServerView(fed.trajectory, None, fed.latest)
    obs = SecAggServer(view, SPEC, fed.candidates).observe(0, IDX, train_size=3)
    assert obs is not None
    kn = obs.knowledge
    assert kn.available() == {"rounds"}
    assert kn.rounds is not None and kn.rounds.grad_cosine is None
    expected = np.stack([fed.loss_of(v.global_after, IDX) for v in fed.views])
    np.testing.assert_allclose(kn.rounds.loss, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(obs.target.loss, expected[-1], rtol=1e-5, atol=1e-6)
    # every client is the same to it: the observation of client 0 is that of client 1
    other = SecAggServer(view, SPEC, fed.candidates).observe(1, IDX, train_size=3)
    assert other is not None and np.array_equal(other.target.loss, obs.target.loss)
    outcomes = {o.attack: o for o in run_attacks(obs, [("fedmia", {}), ("grad-cosine", {}), ("loss", {})], seed=0)}
    assert outcomes["fedmia"].scores is None and outcomes["grad-cosine"].scores is None
    assert outcomes["loss"].scores is not None


# --- no ground truth reaches scoring code ------------------------------------------------------------

TRUTHY = re.compile(r"member|truth|label|is_in\b|in_out|ground|secret|owner|client_of", re.IGNORECASE)


def scoring_callables() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name in ATTACKS.available():
        attack = ATTACKS.create(name)
        out += [(f"{name}.score", attack.score), (f"{name}.__init__", type(attack).__init__)]
        if isinstance(attack, RoundAttack):
            out.append((f"{name}.round_scores", attack.round_scores))
    for party in parties():
        out += [(f"{party.__name__}.observe", party.observe), (f"{party.__name__}.__init__", party.__init__)]
    out += [("ServerView.__init__", ServerView.__init__), ("run_attacks", run_attacks)]
    out.append(("reference_knowledge", reference_knowledge))
    return out


def parties() -> list[type]:
    """Every party class in fedmia.threats (a class with a ``name`` and an ``observe`` method)."""
    found = set()
    for info in pkgutil.iter_modules(fedmia.threats.__path__):
        module = importlib.import_module(f"fedmia.threats.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (
                cls.__module__ == module.__name__
                and hasattr(cls, "observe")
                and isinstance(getattr(cls, "name", None), str)
            ):
                found.add(cls)
    assert {Outsider, Server, SecAggServer, Client} <= found
    return sorted(found, key=lambda c: c.__name__)


def test_no_scoring_or_party_parameter_carries_membership() -> None:
    seen = scoring_callables()
    assert len(seen) > 2 * len(ATTACKS.available())
    for where, fn in seen:
        for p in inspect.signature(fn).parameters.values():
            assert not TRUTHY.search(p.name), f"{where} takes {p.name!r}"
            assert "MembershipPlan" not in str(p.annotation), f"{where}: {p.name} is a MembershipPlan"


def test_what_attacks_receive_has_no_membership_field() -> None:
    """The containers handed to attacks. Allowed: Signals.labels (class labels) and keep / keep_population
    (which records the party's *own* reference models trained on)."""
    allowed = {("Signals", "labels")}
    for cls in (Signals, Knowledge, RoundSignals, Observation):
        for f in fields(cls):
            if (cls.__name__, f.name) not in allowed:
                assert not TRUTHY.search(f.name), f"{cls.__name__}.{f.name}"


_signals = signals_from_logits  # handles stacked (K, n, C) logits itself


def membership_world(seed: int, n: int = 80, m: int = 120, k: int = 8) -> tuple[Signals, Knowledge, np.ndarray]:
    """Everything a party could hold, generated from a hidden membership vector (members get a boost)."""
    rng = np.random.default_rng(seed)
    member = rng.random(n) < 0.5
    y, y_z = rng.integers(0, 3, n), rng.integers(0, 3, m)
    keep, keep_z = rng.random((k, n)) < 0.5, rng.random((k, m)) < 0.5

    def logits(labels: np.ndarray, boost: np.ndarray) -> np.ndarray:
        return np.asarray(rng.standard_normal((*boost.shape, 3)) + boost[..., None] * np.eye(3)[labels])

    target = _signals(logits(y, 1.0 + 2.0 * member), y)
    know = Knowledge(
        references=_signals(logits(y, 1.0 + 2.0 * keep), y),
        keep=keep,
        population=_signals(logits(y_z, np.ones(m)), y_z),
        ref_population=_signals(logits(y_z, 1.0 + 2.0 * keep_z), y_z),
        keep_population=keep_z,
        rounds=RoundSignals(
            loss=rng.gamma(2.0, 0.5, (3, n)) * (1 - 0.25 * member * np.arange(1, 4)[:, None]),  # members' falls
            grad_cosine=rng.normal(0.1 * member, 0.1, (3, n)),
            grad_difference=rng.normal(0.1 * member, 0.1, (3, n)),
        ),
        others=RoundSignals(loss=rng.gamma(2.0, 0.5, (3, 4, n)), grad_cosine=rng.normal(0.0, 0.1, (3, 4, n))),
    )
    # fields added later, from their own stream so the draws above stay as they were
    extra = np.random.default_rng(seed + 1000)
    assert know.rounds is not None
    rounds = dataclasses.replace(
        know.rounds,
        global_loss=know.rounds.loss + extra.gamma(2.0, 0.25, (3, n)) * member,  # members' loss fell locally
        grad_norm=extra.gamma(2.0, 0.5, (3, n)) * (1 - 0.5 * member),  # members' gradients are smaller
    )
    # label-only probe results (robustness fraction, boundary distance), larger for a record a model trained on
    probe = np.random.default_rng(seed + 2000)
    white = np.random.default_rng(seed + 3000)  # white-box gradient norms, smaller for a record trained on
    drop = np.random.default_rng(seed + 4000)  # perturbation drops: the copies' log-odds fall more for a fitted record
    mirror = np.random.default_rng(seed + 5000)  # LiRA's augmented queries: a mirrored copy, less confident

    def probed(s: Signals, fit: np.ndarray) -> Signals:
        return dataclasses.replace(
            s,
            robustness=np.clip(0.5 + 0.2 * fit + probe.normal(0.0, 0.1, fit.shape), 0.0, 1.0),
            boundary=np.maximum(fit + probe.normal(0.0, 0.5, fit.shape), 0.0),
            grad_norm=np.exp(-fit + white.normal(0.0, 0.5, fit.shape)),
            # p_y minus p_y at log-odds lowered by softplus(fit + noise) (MERLIN's direction, as in test_registry)
            perturbation=s.true_prob
            - 1.0 / (1.0 + np.exp(-(s.logit_conf - np.logaddexp(0.0, fit + drop.normal(0.0, 0.3, fit.shape))))),
            augmented=np.stack([s.logit_conf, s.logit_conf - 0.5 + mirror.normal(0.0, 0.5, fit.shape)], axis=-1),
        )

    assert know.references is not None and know.keep is not None
    references = probed(know.references, know.keep.astype(float))
    # the records' features (a quantile regressor's inputs): two uninformative columns each
    feat = np.random.default_rng(seed + 3000)
    features = {
        "candidate_features": feat.normal(0.0, 1.0, (n, 2)),
        "population_features": feat.normal(0.0, 1.0, (m, 2)),
    }
    assert know.population is not None
    population = dataclasses.replace(know.population, perturbation=np.exp(drop.normal(0.0, 0.3, m)))
    know = dataclasses.replace(know, rounds=rounds, references=references, population=population, **features)
    return probed(target, member.astype(float)), know, member


def permute_records(target: Signals, know: Knowledge, perm: np.ndarray) -> tuple[Signals, Knowledge]:
    """The same observation with the candidate records in another order (every per-candidate axis)."""
    assert know.references is not None and know.keep is not None and know.rounds is not None
    assert know.others is not None

    def rounds(rs: RoundSignals) -> RoundSignals:
        return RoundSignals(
            **{f.name: None if (a := getattr(rs, f.name)) is None else a[..., perm] for f in fields(rs)}
        )

    return target.subset(perm), dataclasses.replace(
        know,
        references=know.references.subset(perm),
        keep=know.keep[:, perm],
        candidate_features=None if know.candidate_features is None else know.candidate_features[perm],
        rounds=rounds(know.rounds),
        others=rounds(know.others),
    )


@pytest.mark.parametrize("name", ATTACKS.available())
def test_scores_follow_the_records_not_the_hidden_membership(name: str) -> None:
    """Ground truth never reaches an attack, so it cannot matter where the members sit or what the audit
    knows. Two checks that fail otherwise: (1) shuffling the candidates (members moving to other positions,
    the hidden membership vector permuted with them) moves each record's score with the record, exactly;
    an attack that read the candidate order, where a plan could leak membership, would not. (2) scoring is
    a pure function: repeating it gives identical scores and leaves the observation untouched."""
    target, know, member = membership_world(0)
    attack = ATTACKS.create(name)
    snapshot = copy.deepcopy((target, know))
    scores = np.asarray(attack.score(target, know), dtype=np.float64)
    # the world is not degenerate: the attack does see membership through the signals (the gap attack's
    # score is 1[correct], two values by definition)
    assert len(np.unique(scores)) > (1 if name == "label-gap" else 10)
    assert roc_auc_score(member, scores) > 0.6, name

    perm = np.random.default_rng(1).permutation(len(member))
    moved = ATTACKS.create(name).score(*permute_records(target, know, perm))
    np.testing.assert_allclose(moved, scores[perm], rtol=1e-9, atol=1e-12, err_msg=name)

    again = np.asarray(attack.score(target, know), dtype=np.float64)
    np.testing.assert_array_equal(again, scores)
    for before, after in zip(leaves(snapshot), leaves((target, know)), strict=True):
        np.testing.assert_array_equal(before, after, err_msg=name)


def leaves(obj: Any) -> list[np.ndarray]:
    """Every array inside (nested) dataclasses and tuples, in a fixed order."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, tuple):
        return [a for o in obj for a in leaves(o)]
    if dataclasses.is_dataclass(obj):
        return [a for f in fields(obj) for a in leaves(getattr(obj, f.name))]
    return []
