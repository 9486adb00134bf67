"""The generative models: the agreed interface (shapes, seeds, protocols), the VAE's ELBO against
closed forms and torch.distributions, the GAN's parts, and typed parameters with their ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from torch.distributions import Bernoulli, Normal, kl_divergence

from fedmia.models import MODELS, build_model, family_of, model_family
from fedmia.models.generative import GAN, VAE, Discriminating, Generator, HasELBO
from fedmia.registry import ParamsError

SHAPES = [(1, 8, 8), (30,)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["vae", "gan"])
def test_sample_and_decode_shapes_and_seeds(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, 2, seed=0, hidden=[16])
    assert isinstance(model, Generator) and model.latent_dim >= 1
    state = torch.get_rng_state()
    a, b, c = model.sample(7, seed=1), model.sample(7, seed=1), model.sample(7, seed=2)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never drawn from
    assert a.shape == (7, *shape) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert model.sample(0, seed=1).shape == (0, *shape)
    z = torch.zeros(3, model.latent_dim)
    assert model.decode(z).shape == (3, *shape)
    # sample() is decode() of N(0, I) codes drawn with the seed
    z = torch.randn((7, model.latent_dim), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model.decode(z), a)


def test_protocols_and_families() -> None:
    vae, gan = build_model("vae", (5,), 2, seed=0), build_model("gan", (5,), 2, seed=0)
    mlp = build_model("mlp", (5,), 2, seed=0)
    assert isinstance(vae, HasELBO) and not isinstance(vae, Discriminating)
    assert isinstance(gan, Discriminating) and not isinstance(gan, HasELBO)
    assert not isinstance(mlp, Generator)
    assert [family_of(m) for m in (vae, gan, mlp)] == ["vae", "gan", "classifier"]
    assert [model_family(n) for n in ("vae", "gan", "mlp", "cnn")] == ["vae", "gan", "classifier", "classifier"]
    x = torch.randn(4, 5)
    assert gan.discriminate(x).shape == (4,) and vae.elbo(x).shape == (4,)


def test_gan_parts() -> None:
    gan = build_model("gan", (1, 8, 8), 10, seed=0, latent_dim=4, hidden=[8, 8], output="sigmoid")
    assert isinstance(gan, GAN)
    assert [m.in_features for m in gan.generator if isinstance(m, torch.nn.Linear)] == [4, 8, 8]
    assert gan.sample(20, seed=0).min() >= 0 and gan.sample(20, seed=0).max() <= 1  # sigmoid output
    x = torch.rand(6, 1, 8, 8)
    assert torch.equal(gan.discriminate(x), gan.discriminator(x)[:, 0])
    assert {k.split(".")[0] for k in gan.state_dict()} == {"generator", "discriminator"}


def _vae(shape: tuple[int, ...], **params: object) -> VAE:
    model = build_model("vae", shape, 2, seed=0, **params)
    assert isinstance(model, VAE)
    return model


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_neg_elbo_against_torch_distributions(likelihood: str) -> None:
    """-ELBO(x; eps) = KL(q || N(0, I)) - log p(x | z), z = mu + sigma_q eps, with torch.distributions."""
    model = _vae((6,), latent_dim=3, hidden=[5], likelihood=likelihood, sigma=0.7)
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((4, 6), 0.4), generator=g) if likelihood == "bernoulli" else torch.randn(4, 6)
    eps = torch.randn(4, 3, generator=g)
    mu, logvar = model.encode(x)
    q = Normal(mu, (0.5 * logvar).exp())
    z = mu + q.scale * eps
    out = model.decoder(z)
    pxz = Bernoulli(logits=out) if likelihood == "bernoulli" else Normal(out, 0.7)
    expected = kl_divergence(q, Normal(0.0, 1.0)).sum(1) - pxz.log_prob(x).sum(1)
    assert torch.allclose(model.neg_elbo(x, eps), expected, atol=1e-5)


def test_elbo_of_a_linear_gaussian_vae_with_exact_posterior_is_log_likelihood() -> None:
    """With a linear decoder x = W z + b + sigma n whose columns are orthogonal, the true posterior is the
    diagonal Gaussian N(A (x - b), S), S = (I + W^T W / sigma^2)^-1, A = S W^T / sigma^2. Setting the
    encoder to it makes the ELBO equal log p(x) = log N(x; b, W W^T + sigma^2 I) (scipy)."""
    d, k, sigma = 4, 2, 0.8
    model = _vae((d,), latent_dim=k, hidden=[], sigma=sigma)
    w = torch.tensor([[1.0, 0.5], [2.0, -1.0], [0.0, 1.5], [-1.0, 0.0]], dtype=torch.float64)
    w[:, 1] -= (w[:, 0] @ w[:, 1]) / (w[:, 0] @ w[:, 0]) * w[:, 0]  # orthogonal columns
    b = torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=torch.float64)
    s = torch.linalg.inv(torch.eye(k, dtype=torch.float64) + w.T @ w / sigma**2)
    assert torch.allclose(s, torch.diag(torch.diag(s)))
    a = s @ w.T / sigma**2
    with torch.no_grad():
        (dec,) = [m for m in model.decoder if isinstance(m, torch.nn.Linear)]
        dec.weight.copy_(w)
        dec.bias.copy_(b)
        model.posterior.weight.zero_()
        model.posterior.weight[:k] = a
        model.posterior.bias[:k] = -(a @ b)
        model.posterior.bias[k:] = torch.log(torch.diag(s))
    x = torch.tensor([[0.5, 1.0, -0.5, 0.0], [2.0, -1.0, 0.3, 1.2]])
    log_px = multivariate_normal(b.numpy(), (w @ w.T + sigma**2 * torch.eye(d, dtype=torch.float64)).numpy()).logpdf(
        x.numpy()
    )
    elbo = model.elbo(x, samples=20_000, seed=0).double().numpy()
    np.testing.assert_allclose(elbo, log_px, atol=0.02)
    # a worse posterior (variance too large) gives a strictly lower bound
    with torch.no_grad():
        model.posterior.bias[k:] += 1.0
    assert (model.elbo(x, samples=20_000, seed=0).double().numpy() < log_px - 0.1).all()


def test_elbo_is_deterministic_per_seed_and_leaves_the_mode() -> None:
    model = _vae((1, 8, 8), hidden=[8])
    x = torch.rand(5, 1, 8, 8)
    model.train()
    a, b = model.elbo(x, seed=3), model.elbo(x, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, model.elbo(x, seed=4))
    assert model.training  # restored
    with pytest.raises(ValueError, match="samples"):
        model.elbo(x, samples=0)


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("vae", {"latent_dim": 0}, "latent_dim"),
        ("vae", {"hidden": [16, 0]}, "hidden.1"),
        ("vae", {"sigma": 0.0}, "sigma"),
        ("vae", {"likelihood": "poisson"}, "likelihood"),
        ("vae", {"latent_dim": 2.5}, "latent_dim"),
        ("gan", {"latent_dim": -1}, "latent_dim"),
        ("gan", {"discriminator_hidden": [0]}, "discriminator_hidden.0"),
        ("gan", {"output": "tanh"}, "output"),
        ("gan", {"depth": 3}, "depth"),
    ],
)
def test_bad_params_raise_params_error_naming_them(name: str, params: dict, needle: str) -> None:
    with pytest.raises(ParamsError, match=needle) as info:
        build_model(name, (4,), 2, seed=0, **params)
    assert f"model {name!r}" in str(info.value)


def test_list_shows_parameter_ranges() -> None:
    shown = {p.name: p.annotation for p in MODELS.params("vae")}
    assert shown["latent_dim"] == "int >= 1" and shown["sigma"] == "float > 0"
    assert shown["hidden"] == "Sequence[int >= 1]"


def test_build_is_seeded() -> None:
    a, b = build_model("gan", (3,), 2, seed=5), build_model("gan", (3,), 2, seed=5)
    c = build_model("gan", (3,), 2, seed=6)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not all(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict())
    assert math.isfinite(float(build_model("vae", (3,), 2, seed=0).elbo(torch.zeros(1, 3))[0]))
