"""Generators trained by the one ``train()`` and federated by the same Flower apps.

Oracles: (a) one full-batch SGD step of ``train()`` equals the step computed by hand from the
family's loss (VAE: negative ELBO; GAN: the discriminator's step on L_D, then the generator's on the
non-saturating L_G at the updated discriminator), with the noise drawn in ``train()``'s order;
(b) training on digits raises the ELBO (VAE) and brings the samples closer to the data (GAN, MMD);
(c) DP-SGD's epsilon equals dp-accounting's RDP for (noise, q, steps), and on the GAN the clipping
bounds the discriminator's step and leaves the generator's alone; (d) the federated generator equals
FedAvg of the client updates the server received, every round, over generator and discriminator.
"""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp
from torch.nn import functional as F
from typer.testing import CliRunner

from fedmia.data import load_dataset
from fedmia.fl.inprocess import reference_federation_specs, run_inprocess, train_reference_federations
from fedmia.fl.observe import mean_state
from fedmia.fl.spec import FederationSpec
from fedmia.fl.views import ViewRecorder
from fedmia.models import build_model
from fedmia.seeding import torch_generator
from fedmia.training import DPSpec, EarlyStopping, ModelSpec, Recipe, train
from fedmia.training.batched import BatchingUnsupportedError, can_batch, train_batched
from fedmia.training.train import check_recipe

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the (largest|smallest) alpha"),
]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_dataset("digits")
    return d.x[:400], d.y[:400]


def mmd(a: torch.Tensor, b: np.ndarray) -> float:
    """Squared MMD (biased V-statistic) with a Gaussian kernel, bandwidth = median squared distance."""
    z = torch.cat([torch.as_tensor(a).reshape(len(a), -1), torch.as_tensor(b).reshape(len(b), -1)]).double()
    d2 = torch.cdist(z, z) ** 2
    k = torch.exp(-d2 / d2.median())
    n = len(a)
    return float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())


def sgd(**changes: object) -> Recipe:
    return Recipe(**{"epochs": 1, "batch_size": 1000, "lr": 0.1, "optimizer": "sgd", "momentum": 0.0, **changes})


def params_after_step(params: list[torch.Tensor], loss: torch.Tensor, lr: float) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params)
    return [(p - lr * g).detach() for p, g in zip(params, grads, strict=True)]


# ---- (a) one step by hand -----------------------------------------------------------------------------


def test_vae_step_is_gradient_descent_on_the_negative_elbo() -> None:
    x = torch.rand(12, 5)
    y = torch.zeros(12, dtype=torch.int64)
    model = build_model("vae", (5,), 2, seed=0, latent_dim=2, hidden=[4])
    twin = build_model("vae", (5,), 2, seed=0, latent_dim=2, hidden=[4])
    res = train(model, x.numpy(), y.numpy(), sgd(), generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    perm = torch.randperm(12, generator=g)  # the epoch's shuffle, then the reparameterization noise
    eps = torch.randn((12, 2), generator=g)
    loss = twin.neg_elbo(x[perm], eps).mean()
    expected = params_after_step(list(twin.parameters()), loss, 0.1)
    for p, e in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p, e, atol=1e-6)
    assert res.loss == pytest.approx(float(loss.detach()), rel=1e-5)
    assert res.steps == 1 and math.isnan(res.accuracy)
    assert res.metrics["elbo"] == pytest.approx(float(model.elbo(x).mean()), rel=1e-6)


def test_gan_step_alternates_discriminator_then_non_saturating_generator() -> None:
    x = torch.randn(10, 3)
    y = torch.zeros(10, dtype=torch.int64)
    model = build_model("gan", (3,), 2, seed=0, latent_dim=2, hidden=[4], discriminator_hidden=[4])
    twin = build_model("gan", (3,), 2, seed=0, latent_dim=2, hidden=[4], discriminator_hidden=[4])
    res = train(model, x.numpy(), y.numpy(), sgd(), generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(10, generator=g)
    z_d = torch.randn((10, 2), generator=g)
    d_params = list(twin.discriminator.parameters())
    real, fake = twin.discriminate(x[perm]), twin.discriminate(twin.decode(z_d).detach())
    # L_D = -mean log sigmoid(D(x)) - mean log(1 - sigmoid(D(G(z))))
    loss_d = -F.logsigmoid(real).mean() - F.logsigmoid(-fake).mean()
    d_new = params_after_step(d_params, loss_d, 0.1)
    with torch.no_grad():
        for p, v in zip(d_params, d_new, strict=True):
            p.copy_(v)
    z_g = torch.randn((10, 2), generator=g)  # the generator's batch: batch_size codes
    loss_g = -F.logsigmoid(twin.discriminate(twin.decode(z_g))).mean()  # non-saturating: -log D(G(z))
    g_new = params_after_step(list(twin.generator.parameters()), loss_g, 0.1)
    for p, e in zip(model.discriminator.parameters(), d_new, strict=True):
        assert torch.allclose(p, e, atol=1e-6)
    for p, e in zip(model.generator.parameters(), g_new, strict=True):
        assert torch.allclose(p, e, atol=1e-6)
    assert res.loss == pytest.approx(float(loss_d.detach()), rel=1e-5)
    assert res.metrics["generator_loss"] == pytest.approx(float(loss_g.detach()), rel=1e-5)
    assert all(p.grad is None for p in model.discriminator.parameters())  # the generator step leaves none


def test_gan_fedprox_pulls_both_networks_to_their_start() -> None:
    """FedProx (mu / 2) ||w - w_start||^2 enters the discriminator's loss and the generator's: two
    full-batch SGD steps by hand (at the first step the term's gradient is 0)."""
    x = torch.randn(10, 3)
    mu, lr = 5.0, 0.1
    model = build_model("gan", (3,), 2, seed=0, latent_dim=2, hidden=[4], discriminator_hidden=[4])
    twin = build_model("gan", (3,), 2, seed=0, latent_dim=2, hidden=[4], discriminator_hidden=[4])
    train(model, x.numpy(), np.zeros(10, np.int64), sgd(epochs=2, proximal_mu=mu), generator=torch_generator(4))
    d_params, g_params = list(twin.discriminator.parameters()), list(twin.generator.parameters())
    d_start, g_start = [p.detach().clone() for p in d_params], [p.detach().clone() for p in g_params]

    def prox(params: list[torch.nn.Parameter], start: list[torch.Tensor]) -> torch.Tensor:
        return 0.5 * mu * sum(((p - s) ** 2).sum() for p, s in zip(params, start, strict=True))

    def step(params: list[torch.nn.Parameter], loss: torch.Tensor) -> None:
        new = params_after_step(params, loss, lr)
        with torch.no_grad():
            for p, v in zip(params, new, strict=True):
                p.copy_(v)

    g = torch_generator(4)
    for _ in range(2):
        perm = torch.randperm(10, generator=g)
        z_d = torch.randn((10, 2), generator=g)
        real, fake = twin.discriminate(x[perm]), twin.discriminate(twin.decode(z_d).detach())
        step(d_params, -F.logsigmoid(real).mean() - F.logsigmoid(-fake).mean() + prox(d_params, d_start))
        z_g = torch.randn((10, 2), generator=g)
        step(g_params, -F.logsigmoid(twin.discriminate(twin.decode(z_g))).mean() + prox(g_params, g_start))
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    plain = build_model("gan", (3,), 2, seed=0, latent_dim=2, hidden=[4], discriminator_hidden=[4])
    train(plain, x.numpy(), np.zeros(10, np.int64), sgd(epochs=2), generator=torch_generator(4))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain.parameters(), model.parameters(), strict=True))


# ---- (b) training works on digits ----------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_vae_training_raises_the_elbo_on_digits(digits, likelihood: str) -> None:  # type: ignore[no-untyped-def]
    x, y = digits
    model = build_model("vae", (1, 8, 8), 10, seed=0, hidden=[64], likelihood=likelihood, sigma=0.2)
    before, mmd_before = float(model.elbo(torch.as_tensor(x)).mean()), mmd(model.sample(400, seed=1), x)
    res = train(model, x, y, Recipe(epochs=10, batch_size=64, lr=1e-3, optimizer="adam"), generator=torch_generator(0))
    after = float(model.elbo(torch.as_tensor(x)).mean())
    assert after > before + 10  # nats per record
    assert mmd(model.sample(400, seed=1), x) < 0.75 * mmd_before
    assert res.metrics["elbo"] == pytest.approx(after, rel=1e-6)


def test_gan_training_brings_samples_towards_digits(digits) -> None:  # type: ignore[no-untyped-def]
    x, y = digits
    params = {"hidden": [128], "discriminator_hidden": [128], "output": "sigmoid"}
    model = build_model("gan", (1, 8, 8), 10, seed=0, **params)
    before = mmd(model.sample(400, seed=1), x)
    train(model, x, y, Recipe(epochs=30, batch_size=64, lr=2e-4, optimizer="adam"), generator=torch_generator(0))
    assert mmd(model.sample(400, seed=1), x) < 0.75 * before


# ---- (c) DP-SGD ----------------------------------------------------------------------------------------


def rdp_epsilon(noise: float, q: float, steps: int, delta: float = 1e-5) -> float:
    acc = rdp.RdpAccountant()
    acc.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise)), steps
        )
    )
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize("name", ["vae", "gan"])
def test_dp_sgd_trains_and_reports_epsilon(digits, name: str) -> None:  # type: ignore[no-untyped-def]
    x, y = digits[0][:200], digits[1][:200]
    model = build_model(name, (1, 8, 8), 10, seed=0, hidden=[32])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = Recipe(epochs=3, batch_size=20, lr=1e-3, optimizer="adam", dp=DPSpec(noise_multiplier=1.1))
    res = train(model, x, y, recipe, generator=torch_generator(0))
    assert res.noise_multiplier == 1.1
    assert res.privacy_history == [(1.1, 0.1, 30)]  # q = 1 / (200 / 20 batches), 3 epochs x 10 steps
    assert res.epsilon == pytest.approx(rdp_epsilon(1.1, 0.1, 30), rel=0.02)
    for k, v in model.state_dict().items():
        assert not torch.equal(v, start[k]), k  # every part trained (the GAN's generator too)


def test_dp_gan_clips_the_discriminator_only() -> None:
    """No noise, no Poisson sampling, one full-batch SGD step: the discriminator moves by at most
    lr * C (the mean of per-sample gradients clipped to C); the generator's step is not clipped."""
    x = torch.randn(16, 4).numpy()
    y = np.zeros(16, dtype=np.int64)
    lr, clip = 0.5, 1e-3
    dp = DPSpec(noise_multiplier=0.0, max_grad_norm=clip, poisson_sampling=False)

    def moved(recipe: Recipe) -> tuple[float, float]:
        model = build_model("gan", (4,), 2, seed=0, latent_dim=2, hidden=[8], discriminator_hidden=[8])
        d0 = torch.cat([p.detach().flatten() for p in model.discriminator.parameters()])
        g0 = torch.cat([p.detach().flatten() for p in model.generator.parameters()])
        train(model, x, y, recipe, generator=torch_generator(1))
        d1 = torch.cat([p.detach().flatten() for p in model.discriminator.parameters()])
        g1 = torch.cat([p.detach().flatten() for p in model.generator.parameters()])
        return float((d1 - d0).norm()), float((g1 - g0).norm())

    d_dp, g_dp = moved(sgd(lr=lr, dp=dp))
    d_plain, g_plain = moved(sgd(lr=lr))
    assert d_dp <= lr * clip * (1 + 1e-4)
    assert d_plain > 20 * lr * clip  # without DP the same step is far larger
    assert g_dp > 20 * lr * clip  # the generator is post-processing: not clipped


def test_dp_vae_clips_the_whole_model() -> None:
    """DP-SGD on the VAE covers encoder and decoder: with no noise and no Poisson sampling, one
    full-batch SGD step moves all its parameters together by at most lr * C."""
    x = torch.randn(16, 4).numpy()
    y = np.zeros(16, dtype=np.int64)
    lr, clip = 0.5, 1e-3

    def moved(recipe: Recipe) -> float:
        model = build_model("vae", (4,), 2, seed=0, latent_dim=2, hidden=[8])
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        train(model, x, y, recipe, generator=torch_generator(1))
        return float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())

    dp = DPSpec(noise_multiplier=0.0, max_grad_norm=clip, poisson_sampling=False)
    assert moved(sgd(lr=lr, dp=dp)) <= lr * clip * (1 + 1e-4)
    assert moved(sgd(lr=lr)) > 20 * lr * clip


@pytest.mark.parametrize("name", ["vae", "gan"])
def test_dp_poisson_batches_may_be_empty(name: str) -> None:
    """Three records, batch 1: Poisson sampling at q = 1/3 draws empty batches (P = 8/27 each); the
    family objectives pair no fakes with no records and still take the generator's step."""
    x = torch.randn(3, 4).numpy()
    model = build_model(name, (4,), 2, seed=0, latent_dim=2, hidden=[4])
    recipe = Recipe(epochs=10, batch_size=1, lr=1e-2, optimizer="adam", dp=DPSpec(noise_multiplier=1.0))
    res = train(model, x, np.zeros(3, np.int64), recipe, generator=torch_generator(2))
    assert res.steps == 30 and res.privacy_history == [(1.0, pytest.approx(1 / 3), 30)]
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---- options that are classifier defenses, and batching --------------------------------------------------


@pytest.mark.parametrize(
    "recipe",
    [sgd(label_smoothing=0.1), sgd(early_stopping=EarlyStopping())],
)
@pytest.mark.parametrize("name", ["vae", "gan"])
def test_classifier_defenses_are_refused(name: str, recipe: Recipe) -> None:
    model = build_model(name, (3,), 2, seed=0)
    with pytest.raises(ValueError, match="classifier defense"):
        train(model, np.zeros((4, 3), np.float32), np.zeros(4, np.int64), recipe, generator=torch_generator(0))
    with pytest.raises(ValueError, match="classifier defense"):
        check_recipe(recipe, name)
    check_recipe(recipe, "classifier")  # fine for a classifier


def test_generators_are_not_trained_batched() -> None:
    assert can_batch(sgd()) is None and "vae" in str(can_batch(sgd(), "vae"))
    model = build_model("gan", (3,), 2, seed=0)
    keep = np.ones((1, 4), dtype=bool)
    with pytest.raises(BatchingUnsupportedError, match="gan"):
        train_batched(
            [model], np.zeros((4, 3), np.float32), np.zeros(4, np.int64), keep, sgd(), generators=[torch_generator(0)]
        )


# ---- (d) federated: the same Flower apps -------------------------------------------------------------------


def federation(
    name: str, params: dict, rounds: int = 2, seed: int = 0
) -> tuple[FederationSpec, np.ndarray, np.ndarray]:
    d = load_dataset("digits")
    perm = np.random.default_rng(0).permutation(d.n)
    parts = tuple(np.sort(perm[a:b]) for a, b in [(0, 40), (40, 100), (100, 180)])  # unequal sizes
    spec = FederationSpec(
        dataset="digits",
        partitions=parts,
        model=ModelSpec(name, d.input_shape, d.num_classes, params),
        recipe=Recipe(epochs=1, batch_size=32, lr=1e-3, optimizer="adam"),
        seed=seed,
        rounds=rounds,
        per_round=2,
    )
    return spec, d.x, d.y


@pytest.mark.parametrize(
    ("name", "params"), [("gan", {"hidden": [16], "discriminator_hidden": [16]}), ("vae", {"hidden": [16]})]
)
def test_federated_generator_is_fedavg_of_the_client_updates(name: str, params: dict) -> None:
    spec, x, y = federation(name, params)
    init = spec.model.build(1).state_dict()
    rec = ViewRecorder()
    outcome = run_inprocess(spec, x, y, initial_state=init, observers=[rec])
    assert len(rec.views) == spec.rounds
    previous = init
    for view in rec.views:
        assert len(view.updates) == spec.per_round
        assert all(torch.equal(view.global_before[k], previous[k]) for k in init)
        # FedAvg: the num-examples-weighted mean of the states the server received
        fedavg = mean_state([u.state for u in view.updates], [u.num_examples for u in view.updates])
        assert view.global_after is not None
        for k in init:
            assert torch.allclose(view.global_after[k], fedavg[k], atol=1e-6), k
        # each update is the client's own train() from the global model, with client_train's generator
        for u in view.updates:
            local = spec.model.build(0)
            local.load_state_dict(view.global_before)
            idx = spec.partitions[u.partition_id]
            gen = torch_generator(spec.seed, "client", u.partition_id, "round", view.server_round)
            train(local, x[idx], y[idx], spec.recipe, generator=gen)
            for k, v in local.state_dict().items():
                assert torch.allclose(u.state[k], v, atol=1e-6), k
            assert math.isnan(u.metrics["train-accuracy"])
        previous = view.global_after
    # the generator's and the discriminator's weights are all averaged, and all moved
    assert outcome.final_state is not None
    for k in init:
        assert torch.equal(outcome.final_state[k], previous[k])
        assert not torch.equal(outcome.final_state[k], init[k]), k
    if name == "gan":
        assert {k.split(".")[0] for k in init} == {"generator", "discriminator"}


def test_reference_generator_federations_match_run_inprocess() -> None:
    """Reference federations of generators fall back to the ClientApp one client at a time and give the
    global models ``run_inprocess`` gives for each reference's spec."""
    spec, x, y = federation("vae", {"hidden": [8]}, rounds=2)
    clients = [list(spec.partitions), [p[::-1] for p in spec.partitions[::-1]]]
    inits = [spec.model.build(k).state_dict() for k in range(2)]
    finals = train_reference_federations(spec, x, y, clients, initial_states=inits, seed=5)
    for k, ref in enumerate(reference_federation_specs(spec, clients, seed=5)):
        alone = run_inprocess(ref, x, y, initial_state=inits[k]).final_state
        assert alone is not None
        for key in alone:
            assert torch.equal(finals[k][key], alone[key]), key


# ---- config: bad generator parameters exit 2 ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.params={latent_dim: 0}", "latent_dim"),
        ("model.params={hidden: [0]}", "hidden"),
        ("model.params={likelihood: poisson}", "likelihood"),
    ],
)
def test_bad_generator_params_in_the_config_exit_2(tmp_path: Path, override: str, needle: str) -> None:
    from fedmia.experiment.cli import app

    out = tmp_path / "run"
    args = ["run", str(REPO / "configs" / "quickstart.yaml"), "model.name=vae", override, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "model" in result.output and needle in result.output
    assert not out.exists()
