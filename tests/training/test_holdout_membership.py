"""Members are exactly what was trained on (DESIGN rule 12), with the defenses that hold records out.

The oracle is a per-record gradient-touch check: every record is a one-hot input e_i, so the first
layer's weight column i receives a gradient (and moves) if and only if record i was in a batch of a
gradient step. Early stopping's validation records and adversarial regularization's D' pass through the
model without a gradient, so their columns must stay exactly at their initial values.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from rich.console import Console

from fedmia.data.plan import make_plan, reference_keep
from fedmia.fl.apps import client_holdout, client_train
from fedmia.fl.inprocess import ArraySetup, _inprocess_scope, reference_federation_specs
from fedmia.fl.spec import FederationSpec
from fedmia.fl.strategy import ARRAYS_KEY, CONFIG_KEY
from fedmia.seeding import rng, torch_generator
from fedmia.training import ModelSpec
from fedmia.training.references import out_holdouts, train_reference_group
from fedmia.training.train import (
    AdversarialRegularization,
    EarlyStopping,
    HeldOut,
    Recipe,
    holdout_sizes,
    train,
)

N, CLASSES = 60, 3
SPEC = ModelSpec("mlp", (N,), CLASSES, {"hidden": [8]})
PLAIN = Recipe(epochs=3, batch_size=8, lr=0.1)
ES = Recipe(epochs=3, batch_size=8, lr=0.1, early_stopping=EarlyStopping(validation=0.2, patience=5))
ADV = Recipe(epochs=3, batch_size=8, lr=0.1, adversarial=AdversarialRegularization(strength=1.0))
BOTH = Recipe(
    epochs=3,
    batch_size=8,
    lr=0.1,
    early_stopping=EarlyStopping(validation=0.2, patience=5),
    adversarial=AdversarialRegularization(strength=1.0),
)
train_mod = importlib.import_module("fedmia.training.train")  # the module (the package exports train())
references_mod = importlib.import_module("fedmia.training.references")
HOLDING = {"early-stopping": ES, "adversarial-regularization": ADV, "both": BOTH}


def one_hot(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Record i is the one-hot vector e_i (so it touches only weight column i), with a random label."""
    return np.eye(n, dtype=np.float32), rng(seed, "labels").integers(0, CLASSES, n)


def touched(before: torch.nn.Module, after: torch.nn.Module) -> np.ndarray:
    """The one-hot records (input dimensions) whose first-layer weight column moved: those trained on."""
    w0, w1 = before[1].weight.detach(), after[1].weight.detach()
    return np.flatnonzero((w0 != w1).any(dim=0).numpy())


def test_touch_oracle_sees_a_record_that_was_not_trained_on() -> None:
    """The oracle can fail: training on all but record 5 leaves exactly column 5 unmoved."""
    x, y = one_hot()
    model = SPEC.build(0)
    start = copy.deepcopy(model)
    rest = np.setdiff1d(np.arange(N), [5])
    train(model, x[rest], y[rest], PLAIN, generator=torch_generator(0, "t"))
    assert touched(start, model).tolist() == rest.tolist()


@pytest.mark.parametrize("name", list(HOLDING))
def test_train_with_held_out_records_trains_on_every_given_record(name: str) -> None:
    recipe = HOLDING[name]
    x, y = one_hot()
    perm = rng(1, "split").permutation(N)
    trained, validation, reference = np.sort(perm[:40]), np.sort(perm[40:50]), np.sort(perm[50:])
    model = SPEC.build(1)
    start = copy.deepcopy(model)
    res = train(
        model,
        x[trained],
        y[trained],
        recipe,
        generator=torch_generator(1, name),
        held_out=HeldOut.of(x, y, validation, reference),
    )
    assert touched(start, model).tolist() == trained.tolist()  # every given record, nothing held out
    assert res.held_out.size == 0
    # train_accuracy is measured on the records trained on: the 40 given
    want = float((model(torch.as_tensor(x[trained])).argmax(1).numpy() == y[trained]).mean())
    assert res.accuracy == pytest.approx(want)


@pytest.mark.parametrize("name", list(HOLDING))
def test_train_without_held_out_reports_the_records_it_split_off(name: str) -> None:
    """The fallback (no ``held_out``): train() splits records off itself and names them; exactly those
    are the ones never trained on."""
    x, y = one_hot()
    model = SPEC.build(2)
    start = copy.deepcopy(model)
    res = train(model, x, y, HOLDING[name], generator=torch_generator(2, name))
    v = 12 if HOLDING[name].early_stopping else 0  # round(0.2 * 60)
    r = round(0.2 * (N - v)) if HOLDING[name].adversarial else 0
    assert len(res.held_out) == v + r
    assert touched(start, model).tolist() == np.setdiff1d(np.arange(N), res.held_out).tolist()


def test_a_defense_without_its_held_out_records_is_an_error() -> None:
    x, y = one_hot()
    with pytest.raises(ValueError, match="early stopping needs validation records"):
        train(SPEC.build(0), x, y, ES, generator=torch_generator(0), held_out=HeldOut())
    with pytest.raises(ValueError, match="reference set"):
        train(SPEC.build(0), x, y, BOTH, generator=torch_generator(0), held_out=HeldOut.of(x, y, np.arange(3), None))


def test_plan_holdout_leaves_members_clients_and_candidates() -> None:
    plan = make_plan(200, members=0.4, nonmembers=0.3, population=0.2, test=0.1, rng=rng(0, "plan"))
    original = plan.members
    parts = np.array_split(rng(0, "p").permutation(original), 4)
    fed = plan.with_clients(list(parts)).with_holdout(0.2, 0.2, rng(0, "hold"))
    assert len(fed.client_validation) == len(fed.client_reference) == 4
    for c, part in enumerate(parts):  # each client holds out its own share: 20 records -> 4, then 3 of 16
        assert len(fed.client_validation[c]) == 4 and len(fed.client_reference[c]) == 3
        assert len(fed.clients[c]) == 13
        whole = np.concatenate([fed.clients[c], fed.client_validation[c], fed.client_reference[c]])
        assert sorted(whole.tolist()) == sorted(part.tolist())
    held = np.concatenate([fed.validation, fed.reference])
    assert not np.isin(fed.targets, held).any()  # held-out records are never candidates
    assert np.array_equal(np.sort(np.concatenate(fed.clients)), fed.members)
    assert fed.is_member(fed.targets).sum() == len(fed.members)  # every member is still a candidate
    assert np.isin(fed.targets, plan.nonmembers).sum() == len(plan.nonmembers)
    central = plan.with_holdout(0.2, 0.0, rng(0, "hold"))
    assert len(central.validation) == 16 and len(central.reference) == 0 and len(central.members) == 64
    assert plan.with_holdout(0.0, 0.0, rng(0, "hold")) is plan
    with pytest.raises(ValueError, match="before holding records out"):
        central.with_clients([central.members])


def test_plan_holdout_rejects_overlap_with_candidates() -> None:
    plan = make_plan(50, members=0.4, nonmembers=0.4, population=0.2, test=0.0, rng=rng(0, "plan"))
    with pytest.raises(ValueError, match="overlap|candidates"):
        type(plan)(
            plan.n_records, plan.members[1:], plan.nonmembers, plan.population, plan.test, plan.targets,
            validation=plan.members[:1],
        )  # fmt: skip


def test_centralized_target_trains_on_every_member(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through the config, the plan and the centralized setting: the batches of the target's
    gradient steps cover every record the audit labels member, and no record it scores is held out."""
    from fedmia.experiment import centralized as centralized_mod
    from fedmia.experiment.config import load_config
    from fedmia.experiment.runner import build_context

    repo = Path(__file__).resolve().parents[2]
    overrides = [
        "settings=[centralized]",
        "train.epochs=2",
        "defenses=[{name: early-stopping, params: {patience: 5}}, adversarial-regularization]",
    ]
    ctx = build_context(load_config(repo / "configs" / "compare.yaml", overrides), Console(quiet=True))
    seen: list[torch.Tensor] = []
    real_batches = train_mod.shuffled_batches

    def spy_batches(n: int, batch_size: int, generator: torch.Generator):  # type: ignore[no-untyped-def]
        out = real_batches(n, batch_size, generator)
        seen.extend(out)
        return out

    calls: list[tuple[np.ndarray, HeldOut | None]] = []
    real_train = centralized_mod.train

    def spy_train(model, x, y, recipe, **kw):  # type: ignore[no-untyped-def]
        calls.append((x, kw.get("held_out")))
        return real_train(model, x, y, recipe, **kw)

    monkeypatch.setattr(train_mod, "shuffled_batches", spy_batches)
    monkeypatch.setattr(centralized_mod, "train", spy_train)
    monkeypatch.setattr(centralized_mod, "outsider_audit", lambda *a, **k: None)
    centralized_mod.centralized(ctx)
    [(x_trained, held)] = calls
    plan = ctx.plan
    assert np.array_equal(x_trained, ctx.data.x[plan.members])
    stepped = torch.unique(torch.cat(seen)).numpy()
    assert stepped.tolist() == list(range(len(plan.members)))  # every member went through a gradient step
    assert held is not None and held.validation is not None and held.reference is not None
    assert np.array_equal(held.validation[0], ctx.data.x[plan.validation])
    records, is_member, _ = ctx.audit_targets()
    assert np.array_equal(np.sort(records[is_member]), plan.members)  # labelled member = trained on
    assert not np.isin(records, np.concatenate([plan.validation, plan.reference])).any()
    n_all = len(plan.members) + len(plan.validation) + len(plan.reference)
    assert len(plan.validation) == round(0.2 * n_all)


def _spy_references(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """Capture (initial, trained) copies of every model that ``references.<name>`` trains."""
    pairs: list[tuple[torch.nn.Module, torch.nn.Module]] = []
    real = getattr(references_mod, name)
    if name == "train":

        def spy(model, *args, **kw):  # type: ignore[no-untyped-def]
            start = copy.deepcopy(model)
            out = real(model, *args, **kw)
            pairs.append((start, copy.deepcopy(model)))
            return out
    else:

        def spy(models, *args, **kw):  # type: ignore[no-untyped-def]
            starts = [copy.deepcopy(m) for m in models]
            out = real(models, *args, **kw)
            pairs.extend(zip(starts, out, strict=True))
            return out

    monkeypatch.setattr(references_mod, name, spy)
    return pairs


@pytest.mark.parametrize(("recipe", "batched"), [(BOTH, False), (ES, False), (PLAIN, True), (PLAIN, False)])
def test_reference_keep_is_exactly_what_each_reference_trained_on(
    monkeypatch: pytest.MonkeyPatch, recipe: Recipe, batched: bool
) -> None:
    x, y = one_hot()
    keep = reference_keep(4, N, rng(3, "keep"))  # paired halves: 30 IN per reference
    pairs = _spy_references(monkeypatch, "train_batched" if batched else "train")
    out = train_reference_group(SPEC, recipe, (x, y), keep, range(4), [(x, y)], seed=3, batched=batched)
    assert len(out[0]) == 4 and len(pairs) == 4
    for k, (start, trained) in enumerate(pairs):
        assert touched(start, trained).tolist() == np.flatnonzero(keep[k]).tolist()


def test_reference_holdouts_are_out_of_the_reference_and_sized_like_the_targets() -> None:
    keep = reference_keep(2, N, rng(4, "keep"))
    [(val, ref)] = out_holdouts([np.flatnonzero(keep[0])], np.flatnonzero(~keep[0]), BOTH, rng(4, "h"))
    assert not keep[0, val].any() and not keep[0, ref].any()
    assert len(np.intersect1d(val, ref)) == 0
    # a target owner of 47 records holds out 9 (0.2) for validation, 8 (0.2 of 38) for D', trains on 30
    assert (len(val), len(ref)) == holdout_sizes(30, BOTH) == (9, 8)
    with pytest.raises(ValueError, match="out of them"):
        out_holdouts([np.arange(50)], np.arange(50, 55), BOTH, rng(4, "h"))


def _client_update(setup: ArraySetup, pid: int, server_round: int, state) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    content = RecordDict({ARRAYS_KEY: ArrayRecord(state), CONFIG_KEY: ConfigRecord({"server-round": server_round})})
    ctx = Context(run_id=0, node_id=7, node_config={"partition-id": pid}, state=RecordDict(), run_config={})
    with _inprocess_scope(verbose=False):
        msg = Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)
        reply = client_train(setup, msg, ctx)
    model = SPEC.build(0)
    model.load_state_dict(reply.content[ARRAYS_KEY].to_torch_state_dict())
    return model


@pytest.mark.parametrize("explicit", [True, False])
def test_fl_client_trains_on_the_same_records_every_round(explicit: bool) -> None:
    """A client holds out a fixed set (the spec's, or its own seeded share): in every round its update
    moves exactly the columns of its trained records, and never those of its held-out ones."""
    x, y = one_hot()
    parts = (np.arange(0, 30), np.arange(30, 60))
    holdouts = ((np.array([0, 1, 2]), np.array([3, 4])), (np.array([30, 31]), np.array([32, 33])))
    spec = FederationSpec(
        dataset="one-hot",
        partitions=(parts[0][5:], parts[1][4:]) if explicit else parts,
        model=SPEC,
        recipe=BOTH,
        seed=11,
        rounds=3,
        per_round=2,
        holdouts=holdouts if explicit else (),
    )
    setup = ArraySetup(spec, x=x, y=y)
    for pid in (0, 1):
        trained, val, ref = client_holdout(spec, pid)
        assert len(np.intersect1d(trained, np.concatenate([val, ref]))) == 0
        if explicit:
            assert trained.tolist() == spec.partitions[pid].tolist() and val.tolist() == holdouts[pid][0].tolist()
        else:  # its own share: 30 records -> 6 validation, 5 (0.2 of 24) reference, 19 trained
            assert (len(trained), len(val), len(ref)) == (19, 6, 5)
        for server_round in (1, 2):
            start = SPEC.build(server_round)
            update = _client_update(setup, pid, server_round, start.state_dict())
            assert touched(start, update).tolist() == trained.tolist()


def test_reference_federations_never_inherit_the_targets_holdouts() -> None:
    spec = FederationSpec(
        dataset="one-hot",
        partitions=(np.arange(0, 10), np.arange(10, 20)),
        model=SPEC,
        recipe=BOTH,
        seed=1,
        rounds=1,
        per_round=2,
        holdouts=((np.array([20]), np.array([21])), (np.array([22]), np.array([23]))),
    )
    clients = [(np.arange(0, 5), np.arange(5, 10))]
    [plain] = reference_federation_specs(spec, clients, seed=0)
    assert plain.holdouts == ()
    mine = [((np.array([40]), np.array([41])), (np.array([42]), np.array([43])))]
    [given] = reference_federation_specs(spec, clients, seed=0, holdout_sets=mine)
    assert [v.tolist() for v, _ in given.holdouts] == [[40], [42]]


# --- adversarial regularization's inference model h carries over between calls (FL rounds) ----------


def test_inference_game_state_round_trips() -> None:
    """A game loaded from another's state() is the same game: same h, and the same next Adam step."""
    from fedmia.training.advreg import AdversarialGame

    x, y = one_hot()
    spec = AdversarialRegularization(strength=1.0)
    model = SPEC.build(0)
    members, ref = (
        (torch.as_tensor(x[:40]), torch.as_tensor(y[:40])),
        (torch.as_tensor(x[40:]), torch.as_tensor(y[40:])),
    )
    a = AdversarialGame(spec, CLASSES, 8, torch_generator(0, "a"))
    for _ in range(3):
        a.train_inference(model, members, ref, torch_generator(0, "steps"))
    b = AdversarialGame(spec, CLASSES, 8, torch_generator(1, "b"))  # other initial weights
    b.load_state(a.state())
    assert all(torch.equal(p, q) for p, q in zip(a.h.parameters(), b.h.parameters(), strict=True))
    a.train_inference(model, members, ref, torch_generator(2, "next"))
    b.train_inference(model, members, ref, torch_generator(2, "next"))
    assert all(torch.equal(p, q) for p, q in zip(a.h.parameters(), b.h.parameters(), strict=True))
    fresh = AdversarialGame(spec, CLASSES, 8, torch_generator(1, "b"))
    fresh.train_inference(model, members, ref, torch_generator(2, "next"))
    assert not all(torch.equal(p, q) for p, q in zip(a.h.parameters(), fresh.h.parameters(), strict=True))


def test_fl_client_keeps_its_inference_model_across_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 2's train() starts from the h (and optimizer) round 1 ended with, kept in the client's
    context.state; the first round starts fresh."""
    from fedmia.fl import apps as apps_mod
    from fedmia.training.advreg import AdversarialGame

    x, y = one_hot()
    spec = FederationSpec(
        dataset="one-hot", partitions=(np.arange(0, 30), np.arange(30, 60)), model=SPEC, recipe=ADV,
        seed=5, rounds=2, per_round=2,
    )  # fmt: skip
    setup = ArraySetup(spec, x=x, y=y)
    starts: list[dict[str, torch.Tensor]] = []
    real_train_inference = AdversarialGame.train_inference

    def spy(self, *args, **kw):  # type: ignore[no-untyped-def]
        if self.first:
            starts.append({k: v.clone() for k, v in self.h.state_dict().items()})
            self.first = False
        return real_train_inference(self, *args, **kw)

    monkeypatch.setattr(AdversarialGame, "first", True, raising=False)
    monkeypatch.setattr(AdversarialGame, "train_inference", spy)
    ctx = Context(run_id=0, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    ended: list[dict[str, torch.Tensor]] = []
    for server_round in (1, 2):
        content = RecordDict(
            {
                ARRAYS_KEY: ArrayRecord(SPEC.build(0).state_dict()),
                CONFIG_KEY: ConfigRecord({"server-round": server_round}),
            }
        )
        with _inprocess_scope(verbose=False):
            client_train(setup, Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN), ctx)
        ended.append(ctx.state[apps_mod.INFERENCE_KEY].to_torch_state_dict())  # type: ignore[union-attr]
    assert len(starts) == 2
    h_end_1 = {k[2:]: v for k, v in ended[0].items() if k.startswith("h.")}
    assert all(torch.equal(starts[1][k], h_end_1[k]) for k in starts[1])  # round 2 continues round 1's h
    assert not all(torch.equal(starts[0][k], h_end_1[k]) for k in starts[0])  # h did learn in round 1
    assert any(k.startswith("adam.") for k in ended[0])  # and its optimizer state travels with it


def test_federation_spec_carries_the_plans_client_holdouts() -> None:
    """A federated run's clients train on the plan's client partitions (its members) and hold out the
    plan's per-client records, which are never candidates."""
    from fedmia.experiment.config import load_config
    from fedmia.experiment.federation import federation_spec
    from fedmia.experiment.runner import build_context

    repo = Path(__file__).resolve().parents[2]
    overrides = ["settings=[federated]", "defenses=[early-stopping, adversarial-regularization]"]
    ctx = build_context(load_config(repo / "configs" / "compare.yaml", overrides), Console(quiet=True))
    spec, plan = federation_spec(ctx), ctx.plan
    assert len(spec.holdouts) == spec.num_clients == len(plan.clients)
    records, is_member, _ = ctx.audit_targets()
    for c in range(spec.num_clients):
        trained, val, ref = client_holdout(spec, c)
        assert np.array_equal(trained, plan.clients[c]) and len(val) and len(ref)
        assert not np.isin(np.concatenate([val, ref]), records).any()
        assert np.isin(trained, records[is_member]).all()
    assert np.array_equal(np.sort(np.concatenate(spec.partitions)), np.sort(records[is_member]))
