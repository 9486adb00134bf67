"""Each party's view of a generator: what it holds follows from its position (issue 14, part 3).

The federation is the in-process one (Flower's apps, no Ray); its recorded views are the ground
truth each party's observation is checked against: the server holds every client update of every
round, a client only the global generators of the rounds it was sampled in, an outsider no rounds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmia.data import load_dataset
from fedmia.fl.inprocess import run_inprocess
from fedmia.fl.spec import FederationSpec
from fedmia.fl.views import ViewRecorder
from fedmia.models import build_model
from fedmia.threats import generative as parties
from fedmia.training import ModelSpec, Recipe


@pytest.fixture(scope="module")
def federation():  # type: ignore[no-untyped-def]
    d = load_dataset("breast-cancer")
    perm = np.random.default_rng(0).permutation(d.n)
    parts = tuple(np.sort(perm[a:b]) for a, b in [(0, 50), (50, 120), (120, 200), (200, 260)])
    spec = FederationSpec(
        dataset="breast-cancer",
        partitions=parts,
        model=ModelSpec("gan", d.input_shape, d.num_classes, {"hidden": [8], "discriminator_hidden": [8]}),
        recipe=Recipe(epochs=1, batch_size=32, lr=1e-3, optimizer="adam"),
        seed=0,
        rounds=3,
        per_round=2,  # 2 of 4 clients a round: a client misses rounds
    )
    rec = ViewRecorder()
    outcome = run_inprocess(spec, d.x, d.y, initial_state=spec.model.build(1).state_dict(), observers=[rec])
    final = spec.model.build(0)
    final.load_state_dict(outcome.final_state)
    targets, population = d.x[perm[260:320]], d.x[perm[320:400]]
    synthetic = parties.release(final, 50, seed=0)
    return spec, rec.views, final, targets, population, synthetic


def same(a: torch.nn.Module, b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.state_dict().items())


def test_outsiders(federation) -> None:  # type: ignore[no-untyped-def]
    _, _, final, targets, population, synthetic = federation
    black = parties.outsider_samples(targets, population, synthetic)
    white = parties.outsider_weights(targets, population, synthetic, final)
    assert black.generator is None and black.discriminator is None and black.rounds is None
    assert black.synthetic is synthetic and black.targets is targets and black.population is population
    assert white.generator is final and white.rounds is None
    x = torch.as_tensor(targets[:5])
    assert white.discriminator is not None and torch.equal(white.discriminator(x), final.discriminate(x))
    assert black.describe()["weights"] is False and white.describe()["discriminator"] is True
    ref = build_model("gan", final.input_shape, 2, seed=9, hidden=[8], discriminator_hidden=[8])
    ref_samples = parties.release(ref, 20, seed=0)
    calibrated = black.with_reference(ref, ref_samples)
    assert calibrated.reference_generator is ref and calibrated.reference_synthetic is ref_samples
    assert calibrated.generator is None and black.reference_generator is None  # a copy; the view is unchanged
    assert calibrated.describe()["reference_generator"] is True


def test_server_holds_every_client_update_of_every_round(federation) -> None:  # type: ignore[no-untyped-def]
    spec, views, final, targets, population, synthetic = federation
    obs = parties.server(targets, population, synthetic, views, spec.model, final)
    assert obs.rounds is not None and [r.server_round for r in obs.rounds] == [1, 2, 3]
    for r, v in zip(obs.rounds, views, strict=True):
        assert same(r.global_model, v.global_before)
        assert sorted(r.clients) == sorted(u.partition_id for u in v.updates) and len(r.clients) == 2
        for u in v.updates:
            assert same(r.clients[u.partition_id], u.state)
    assert obs.generator is final and obs.describe()["client_updates"] == 6


@pytest.mark.parametrize("partition", range(4))
def test_client_holds_the_global_generators_of_its_rounds(federation, partition: int) -> None:  # type: ignore[no-untyped-def]
    spec, views, final, targets, population, synthetic = federation
    obs = parties.client(partition, targets, population, synthetic, views, spec.model, final)
    server = parties.server(targets, population, synthetic, views, spec.model, final)
    mine = [v for v in views if partition in v.sampled]
    assert obs.rounds is not None and server.rounds is not None
    assert [r.server_round for r in obs.rounds] == [v.server_round for v in mine]
    by_round = {r.server_round: r for r in server.rounds}
    for r, v in zip(obs.rounds, mine, strict=True):
        assert same(r.global_model, v.global_before) and not r.clients  # no other client's update
        assert same(r.global_model, by_round[r.server_round].global_model.state_dict())  # the server saw it too
    assert obs.generator is final


def test_some_client_misses_a_round(federation) -> None:  # type: ignore[no-untyped-def]
    """The fixture makes the client views above differ from the server's (2 of 4 clients a round)."""
    _, views, *_ = federation
    assert any(len(v.sampled) < 4 for v in views)
    assert len({tuple(v.sampled) for v in views}) > 1


def test_release_is_seeded_and_needs_a_generator() -> None:
    vae = build_model("vae", (4,), 2, seed=0)
    a, b = parties.release(vae, 10, seed=1), parties.release(vae, 10, seed=1)
    assert a.shape == (10, 4) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, parties.release(vae, 10, seed=2))
    with pytest.raises(TypeError, match="not a generator"):
        parties.release(build_model("mlp", (4,), 2, seed=0), 10, seed=1)


def test_attacks_run_on_what_each_party_holds(federation) -> None:  # type: ignore[no-untyped-def]
    spec, views, final, targets, population, synthetic = federation
    specs = [("dcr", {}), ("logan", {}), ("elbo", {}), ("gan-leaks-cal", {})]
    black = parties.outsider_samples(targets, population, synthetic)
    white = parties.outsider_weights(targets, population, synthetic, final)
    k = white.knowledge()
    assert k.synthetic is synthetic and k.population is population and k.generator is final
    assert k.discriminator is not None and k.reference_generator is None
    out_black = {o.attack: o for o in parties.run_generative_attacks(black, specs, seed=0)}
    out_white = {o.attack: o for o in parties.run_generative_attacks(white, specs, seed=0)}
    assert out_black["dcr"].scores is not None and out_black["dcr"].scores.shape == (len(targets),)
    assert out_black["logan"].scores is None and "discriminator" in str(out_black["logan"].skipped)
    assert out_black["gan-leaks-cal"].scores is None  # no reference generator yet
    # the weights add LOGAN (the GAN's discriminator logit), and keep what the samples gave
    assert np.array_equal(out_white["logan"].scores, final.discriminate(torch.as_tensor(targets)).detach().numpy())
    assert np.array_equal(out_white["dcr"].scores, out_black["dcr"].scores)
    assert out_white["elbo"].scores is None and "elbo" in str(out_white["elbo"].skipped)  # a GAN has no ELBO
    ref = build_model("gan", final.input_shape, 2, seed=9, hidden=[8], discriminator_hidden=[8])
    calibrated = black.with_reference(ref, parties.release(ref, 40, seed=3))
    (cal,) = parties.run_generative_attacks(calibrated, [("gan-leaks-cal", {})], seed=0)
    assert cal.scores is not None and np.isfinite(cal.scores).all()


def test_the_server_attacks_each_clients_latest_generator_and_keeps_the_maximum(federation) -> None:  # type: ignore[no-untyped-def]
    spec, views, final, targets, population, synthetic = federation
    server = parties.server(targets, population, synthetic, views, spec.model, final)
    latest: dict[int, dict] = {}
    for v in views:  # by hand: each client's update of the last round it was sampled in
        for u in v.updates:
            latest[u.partition_id] = u.state
    generators = server.client_generators()
    assert sorted(generators) == sorted(latest)
    for pid, model in generators.items():
        assert same(model, latest[pid])
    (logan,) = parties.run_generative_attacks(server, [("logan", {})], seed=0)
    with torch.no_grad():
        by_client = [m.discriminate(torch.as_tensor(targets)).numpy() for m in generators.values()]
    np.testing.assert_allclose(logan.scores, np.max(by_client, axis=0), rtol=1e-6)
    # the client party has no client generators: it attacks the final one, as an outsider with the weights
    client = parties.client(0, targets, population, synthetic, views, spec.model, final)
    assert client.client_generators() == {}
    (dcr,) = parties.run_generative_attacks(client, [("dcr", {})], seed=0)
    white = parties.outsider_weights(targets, population, synthetic, final)
    (dcr_white,) = parties.run_generative_attacks(white, [("dcr", {})], seed=0)
    np.testing.assert_array_equal(dcr.scores, dcr_white.scores)
