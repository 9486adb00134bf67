"""Every training-time defense reaches every FL client: ``client_train`` trains with the spec's recipe
(and the model spec's parameters), so its update is ``train()``'s with that defended recipe."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedmia.fl.apps import ClientSetup, client_holdout, client_train
from fedmia.fl.inprocess import _inprocess_scope
from fedmia.fl.strategy import ARRAYS_KEY, CONFIG_KEY
from fedmia.seeding import torch_generator
from fedmia.training import DEFENSES, apply_recipe, model_params, train
from fedmia.training.train import HeldOut

PID, ROUND, SEED = 1, 2, 5

DEFENDED = [
    ("l2", {"weight_decay": 5e-3}),
    ("dropout", {"p": 0.5}),
    ("early-stopping", {"validation": 0.25, "patience": 1}),
    ("label-smoothing", {"epsilon": 0.2}),
    ("adversarial-regularization", {"strength": 1.0}),
    ("weighted-smoothing", {"warmup_epochs": 1}),
]


def _client_update(spec, state) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    content = RecordDict({ARRAYS_KEY: ArrayRecord(state), CONFIG_KEY: ConfigRecord({"server-round": ROUND})})
    ctx = Context(run_id=0, node_id=7, node_config={"partition-id": PID}, state=RecordDict(), run_config={})
    with _inprocess_scope(verbose=False):  # Flower's Message() needs a task identity, as in-process runs set
        msg = Message(content=content, dst_node_id=7, message_type=MessageType.TRAIN)
        reply = client_train(ClientSetup(spec), msg, ctx)
    return reply.content[ARRAYS_KEY].to_torch_state_dict()


def _start(digits, params) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """The federation's starting model with these parameters (dropout shifts Sequential's keys; the
    weights are digits.initial_state's: building a Dropout layer draws nothing)."""
    return dataclasses.replace(digits.spec, params=params).build(1).state_dict()


def _direct(digits, recipe, params) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    model = dataclasses.replace(digits.spec, params=params).build(0)
    model.load_state_dict(_start(digits, params))
    # the client's fixed held-out share (early stopping, adversarial regularization): the same every round
    idx, val, ref = client_holdout(digits.spec_for(seed=SEED, rounds=2, per_round=3, recipe=recipe), PID)
    gen = torch_generator(SEED, "client", PID, "round", ROUND)
    train(model, digits.x[idx], digits.y[idx], recipe, generator=gen, held_out=HeldOut.of(digits.x, digits.y, val, ref))
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize(("name", "params"), DEFENDED, ids=[d[0] for d in DEFENDED])
def test_client_update_is_train_with_the_defended_recipe(digits, name: str, params: dict) -> None:  # type: ignore[no-untyped-def]
    defense = DEFENSES.create(name, **params)
    plain = digits.recipe(epochs=3)
    recipe = apply_recipe(plain, [defense])
    mparams = model_params(digits.spec.params, [defense])
    spec = digits.spec_for(seed=SEED, rounds=2, per_round=3, recipe=recipe)
    spec = dataclasses.replace(spec, model=dataclasses.replace(digits.spec, params=mparams))
    got = list(_client_update(spec, _start(digits, mparams)).values())  # an MLP's state is its parameters
    want = _direct(digits, recipe, mparams)
    undefended = _direct(digits, plain, digits.spec.params)
    assert len(got) == len(want) == len(undefended)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert any(not torch.equal(g, u) for g, u in zip(got, undefended, strict=True))
