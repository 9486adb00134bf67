"""Attacks on generative models (fedmia.attacks.generative): oracles computed by hand or by the definition,
the sign convention on an overfit toy generator, chance on a private one, and bad parameters.

The generators here are toys that satisfy the agreed generator protocol structurally (``latent_dim``,
``sample(n, seed)``, ``decode(z)``, a GAN's ``discriminate(x)``); they are defined in this file, so the tests
do not depend on the models layer's generators.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import pytest
import scipy.optimize
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from torch import nn

import fedmia.attacks.generative as gen
from fedmia.attacks import GENERATIVE_ATTACKS, GenerativeKnowledge, MissingKnowledgeError
from fedmia.errors import InputError
from fedmia.registry import ParamsError, UnknownNameError


class Generator(Protocol):
    """The agreed generator protocol (the models layer implements it; a private copy until it lands)."""

    latent_dim: int

    def sample(self, n: int, seed: int) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


class GAN(Generator, Protocol):
    def discriminate(self, x: torch.Tensor) -> torch.Tensor: ...


class LinearDecoder(nn.Module):
    """G(z) = W z + b with z ~ N(0, I): a linear-Gaussian generator (records of shape (d,))."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight.clone()), nn.Parameter(bias.clone())
        self.latent_dim = weight.shape[1]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.T + self.bias

    def sample(self, n: int, seed: int) -> torch.Tensor:
        z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            return self.decode(z)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """The exact log-likelihood log N(x; b, W W') (a VAE whose posterior is exact has ELBO = log p(x))."""
        cov = self.weight @ self.weight.T + 1e-6 * torch.eye(len(self.bias))
        return torch.distributions.MultivariateNormal(self.bias, cov).log_prob(x.reshape(len(x), -1))


class Memorizer(nn.Module):
    """An overfit generator: decode(z) = softmax(beta z) @ train, so every training record is reachable (and
    nothing else but their mixtures); sample() returns training records plus a little noise."""

    def __init__(self, train: np.ndarray, beta: float = 4.0, noise: float = 0.3) -> None:
        super().__init__()
        self.register_buffer("records", torch.as_tensor(train, dtype=torch.float32))
        self.latent_dim, self.beta, self.noise = len(train), beta, noise

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.beta * z, dim=1) @ self.records

    def sample(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, self.records.shape[0], (n,), generator=g)
        return self.records[idx] + self.noise * torch.randn(n, self.records.shape[1], generator=g)

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """A discriminator that learned its training set: minus the squared distance to the nearest one."""
        return -(torch.cdist(x.reshape(x.shape[0], -1), self.records).min(dim=1).values ** 2)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """An overfit likelihood: the log-density of a narrow Gaussian mixture on the training records."""
        sq = torch.cdist(x.reshape(x.shape[0], -1), self.records) ** 2
        d = self.records.shape[1]
        log_k = -sq / (2 * self.noise**2) - d * (np.log(self.noise) + 0.5 * np.log(2 * np.pi))
        return torch.logsumexp(log_k, dim=1) - np.log(len(self.records))


# ----------------------------------------------------------------------------------------------------------
# oracles


def test_dcr_by_hand() -> None:
    t = np.array([[0.0], [5.0]])
    syn = np.array([[1.0], [4.5], [10.0]])
    pop = np.array([[2.0], [7.0]])
    np.testing.assert_allclose(gen.dcr(t, syn), [-1.0, -0.5])
    np.testing.assert_allclose(gen.dcr(t, syn, pop), [2.0 - 1.0, 2.0 - 0.5])  # d_pop - d_syn


def test_nearest_distance_in_blocks_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(37, 2, 3)), rng.normal(size=(11, 6))  # records of shape (2, 3) flatten to 6
    brute = np.sqrt(((a.reshape(37, 1, 6) - b[None]) ** 2).sum(-1)).min(1)
    monkeypatch.setattr(gen, "_BLOCK", 25)  # 2 rows per block: 19 blocks, the last one short
    np.testing.assert_allclose(gen.nearest_distance(a, b), brute, rtol=1e-12)
    with pytest.raises(ValueError, match="same number of features"):
        gen.nearest_distance(a, b[:, :5])


def test_monte_carlo_by_hand() -> None:
    t = np.array([[0.0], [3.0]])
    syn = np.array([[0.5], [1.0], [2.9], [8.0]])
    # distances: t0 -> 0.5, 1, 2.9, 8 (nearest 0.5); t1 -> 2.5, 2, 0.1, 5 (nearest 0.1)
    # median heuristic: eps = median(0.5, 0.1) = 0.3 -> t0 has no sample within, t1 one of four
    np.testing.assert_allclose(gen.monte_carlo(t, syn), [0.0, 0.25])
    np.testing.assert_allclose(gen.monte_carlo(t, syn, epsilon=1.0), [0.5, 0.25])  # 0.5 and 1.0 (<= eps) count
    # percentile heuristic, 50th of the 8 distances: (2 + 2.5) / 2 = 2.25 -> t0: 0.5, 1; t1: 2, 0.1
    np.testing.assert_allclose(gen.monte_carlo(t, syn, heuristic="percentile", percentile=50.0), [0.5, 0.5])
    # log weighting, eps = 1: t0: -log(0.5) - log(1); t1: -log(0.1)
    np.testing.assert_allclose(
        gen.monte_carlo(t, syn, epsilon=1.0, weighting="log"), [np.log(2.0) / 4, np.log(10.0) / 4], rtol=1e-12
    )


def _kde_by_hand(data: np.ndarray, points: np.ndarray) -> np.ndarray:
    """log of a Gaussian KDE with Scott's factor n^(-1/(d+4)) on the data covariance (scipy's convention)."""
    n, d = data.shape
    cov = np.atleast_2d(np.cov(data.T)) * n ** (-2.0 / (d + 4))
    inv, (_, logdet) = np.linalg.inv(cov), np.linalg.slogdet(cov)
    diff = points[:, None, :] - data[None, :, :]
    quad = np.einsum("pnd,de,pne->pn", diff, inv, diff)
    log_k = -0.5 * quad - 0.5 * (d * np.log(2 * np.pi) + logdet)
    return np.log(np.exp(log_k).mean(axis=1))


def test_domias_is_the_log_ratio_of_two_kdes() -> None:
    rng = np.random.default_rng(1)
    syn = rng.normal([0.5, 0.0], [1.0, 0.5], size=(300, 2))
    ref = rng.normal([0.0, 0.0], [1.5, 1.0], size=(400, 2))
    t = rng.normal(size=(25, 2))
    expected = _kde_by_hand(syn, t) - _kde_by_hand(ref, t)
    np.testing.assert_allclose(gen.domias(t, syn, ref), expected, rtol=1e-8, atol=1e-10)


def test_domias_approaches_the_true_density_ratio() -> None:
    rng = np.random.default_rng(2)
    syn = rng.normal(0.5, 1.0, size=(20_000, 1))  # p_G = N(0.5, 1)
    ref = rng.normal(0.0, 1.0, size=(20_000, 1))  # p_R = N(0, 1)
    t = np.linspace(-1.0, 1.0, 9)[:, None]
    true = 0.5 * t[:, 0] - 0.125  # log N(t; 0.5, 1) - log N(t; 0, 1)
    np.testing.assert_allclose(gen.domias(t, syn, ref), true, atol=0.05)


def test_domias_projects_on_the_reference_pca_above_max_dim() -> None:
    rng = np.random.default_rng(3)
    ref, syn, t = rng.normal(size=(200, 6)), rng.normal(0.3, 1.0, size=(150, 6)), rng.normal(size=(10, 6))
    pca = PCA(n_components=2, svd_solver="full").fit(ref)  # fitted on the reference (the party's own data)
    expected = gen.domias(pca.transform(t), pca.transform(syn), pca.transform(ref), max_dim=None)
    np.testing.assert_allclose(gen.domias(t, syn, ref, max_dim=2), expected, rtol=1e-8)
    assert not np.allclose(gen.domias(t, syn, ref, max_dim=None), expected)  # the projection did something


def test_logan_returns_the_discriminator_logits_in_batches() -> None:
    torch.manual_seed(0)
    disc = nn.Sequential(nn.Flatten(), nn.Linear(6, 1), nn.Flatten(0))  # logits (n,)
    x = np.random.default_rng(4).normal(size=(20, 2, 3)).astype(np.float32)
    with torch.no_grad():
        expected = disc(torch.as_tensor(x)).double().numpy()
    np.testing.assert_allclose(gen.logan(disc, x, batch_size=7), expected, rtol=1e-6)
    assert disc[1].weight.grad is None
    with pytest.raises(ValueError, match="discriminate must return one value per record"):
        gen.logan(lambda z: z.reshape(z.shape[0], -1), x)


def test_elbo_attack_returns_the_elbo_in_batches() -> None:
    dec, x = _linear_world()
    square = LinearDecoder(torch.tril(torch.rand(6, 6)) + torch.eye(6), dec.bias.detach())
    with torch.no_grad():
        expected = square.elbo(torch.as_tensor(x)).double().numpy()
    np.testing.assert_allclose(gen.elbo_score(square.elbo, x, batch_size=2), expected, rtol=1e-6)
    with pytest.raises(MissingKnowledgeError, match="elbo"):  # a generator without a likelihood (a GAN)
        GENERATIVE_ATTACKS.create("elbo").score(x, GenerativeKnowledge(generator=_NoELBO()))


class _NoELBO:
    latent_dim = 3

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


def test_gan_leaks_black_box_by_hand() -> None:
    t = np.array([[0.0], [5.0]])
    syn, ref = np.array([[1.0], [4.5]]), np.array([[0.5], [8.0]])
    np.testing.assert_allclose(gen.gan_leaks_black_box(t, syn), [-1.0, -0.5])
    np.testing.assert_allclose(gen.gan_leaks_black_box(t, syn, ref), [-(1.0 - 0.5), -(0.5 - 3.0)])


def _linear_world(seed: int = 5) -> tuple[LinearDecoder, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return LinearDecoder(torch.randn(6, 3, generator=g), torch.randn(6, generator=g)), torch.randn(
        5, 6, generator=g
    ).numpy()


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_white_box_reconstruction_is_the_ridge_solution_on_a_linear_decoder(optimizer: str) -> None:
    dec, x = _linear_world()
    lam, d = 0.05, x.shape[1]
    w, b = dec.weight.detach().double().numpy(), dec.bias.detach().double().numpy()
    # (1/d) ||x - W z - b||^2 + lam ||z||^2 is minimised by z* = (W'W + d lam I)^-1 W'(x - b)
    z_star = np.linalg.solve(w.T @ w + d * lam * np.eye(3), w.T @ (x - b).T).T
    # Adam has converged by 1,000 steps: max |z - z*| 9.7e-7 (9.5e-7 at 2,000), far inside the 2e-3 below
    steps, lr, batch = (100, 0.05, 2) if optimizer == "lbfgs" else (1000, 0.02, len(x))
    err, z = gen.reconstruct(
        dec, x, lam=lam, regularizer="ridge", optimizer=optimizer, steps=steps, lr=lr, n_starts=2, batch_size=batch
    )
    np.testing.assert_allclose(z, z_star, atol=2e-3)
    np.testing.assert_allclose(err, ((x - z_star @ w.T - b) ** 2).mean(axis=1), rtol=1e-3)
    assert dec.weight.grad is None and dec.bias.grad is None  # the generator's own gradients untouched


def test_white_box_norm_regularizer_reaches_scipys_minimum() -> None:
    """The paper's objective (1/d)||x - G(z)||^2 + lam (||z||^2 - k)^2 from z = 0: no worse than scipy's L-BFGS-B."""
    dec, x = _linear_world(6)
    lam = 0.01
    w, b = dec.weight.detach().double().numpy(), dec.bias.detach().double().numpy()

    def objective(z: np.ndarray, xi: np.ndarray) -> float:
        return float(((xi - w @ z - b) ** 2).mean() + lam * (z @ z - 3) ** 2)

    err, z = gen.reconstruct(dec, x, lam=lam, regularizer="norm", n_starts=1, steps=200)
    for xi, zi, ei in zip(x, z, err, strict=True):
        ref = scipy.optimize.minimize(objective, np.zeros(3), args=(xi,), method="L-BFGS-B")
        assert objective(zi, xi) <= ref.fun + 1e-5
        assert ei == pytest.approx(((xi - w @ zi - b) ** 2).mean(), rel=1e-4)


def test_nearest_neighbour_start_is_the_latent_of_the_nearest_decoded_draw() -> None:
    """GAN-Leaks' ``-init nn``: nn_pool latents drawn after the random starts; with a step too small to move,
    each target keeps whichever start reconstructs it better: z = 0 or the latent of its nearest decoding."""
    dec, x = _linear_world(10)
    x = x * 3.0  # targets far from G(0) = b, so that most are nearer to some decoded draw
    w, b = dec.weight.detach().double().numpy(), dec.bias.detach().double().numpy()
    pool = torch.randn(500, 3, generator=torch.Generator().manual_seed(4)).double().numpy()  # no random starts
    decoded = pool @ w.T + b
    nearest = pool[np.argmin(((x[:, None, :] - decoded[None]) ** 2).sum(-1), axis=1)]
    err_nn, err_zero = ((x - nearest @ w.T - b) ** 2).mean(1), ((x - b) ** 2).mean(1)
    expected = np.where((err_nn < err_zero)[:, None], nearest, 0.0)
    assert (err_nn < err_zero).sum() >= 3  # the oracle exercises the nearest-neighbour start
    _, z = gen.reconstruct(dec, x, lam=0.0, optimizer="adam", steps=1, lr=1e-12, n_starts=1, nn_pool=500, seed=4)
    np.testing.assert_allclose(z, expected, atol=1e-6)


def test_adam_reconstruction_does_not_depend_on_the_batch() -> None:
    dec, x = _linear_world(7)
    opts = dict(optimizer="adam", steps=50, lr=0.05, n_starts=3, seed=11)
    one = gen.reconstruct(dec, x, batch_size=1, **opts)  # type: ignore[arg-type]
    all_ = gen.reconstruct(dec, x, batch_size=len(x), **opts)  # type: ignore[arg-type]
    np.testing.assert_allclose(one[0], all_[0], rtol=1e-5)
    np.testing.assert_allclose(one[1], all_[1], rtol=1e-5, atol=1e-6)


def test_white_box_calibration_subtracts_the_reference_reconstruction() -> None:
    dec, x = _linear_world(8)
    ref, _ = _linear_world(9)
    opts = dict(regularizer="ridge", lam=0.01, steps=50, n_starts=1)
    expected = -(gen.reconstruct(dec, x, **opts)[0] - gen.reconstruct(ref, x, **opts)[0])  # type: ignore[arg-type]
    np.testing.assert_allclose(gen.gan_leaks_white_box(dec, x, ref, **opts), expected, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# sign convention: an overfit generator leaks, a private one does not


D, N_MEMBERS, N_POP, N_SYN = 8, 100, 1000, 2000
N_NULL = 400  # per side: the private generator's "members" and non-members (a larger sample: see null_sd)


@dataclasses.dataclass(frozen=True)
class World:
    targets: np.ndarray
    member: np.ndarray  # ground truth: only the audit (here, roc_auc_score) reads it
    overfit: GenerativeKnowledge
    private: GenerativeKnowledge
    # 2 N_NULL fresh records, the first half labelled member: nothing the private side holds depends on them
    null_targets: np.ndarray
    null_member: np.ndarray


def _mixture(rng: np.random.Generator, n: int) -> np.ndarray:
    """Records from a mixture of four Gaussians in D dimensions (the data distribution)."""
    centres = np.array([[3.0] * D, [-3.0] * D, [3.0, -3.0] * (D // 2), [-3.0, 3.0] * (D // 2)])
    return (centres[rng.integers(0, 4, n)] + rng.normal(size=(n, D))).astype(np.float32)


def make_world(seed: int) -> World:
    rng = np.random.default_rng(seed)
    members, nonmembers, population = _mixture(rng, N_MEMBERS), _mixture(rng, N_MEMBERS), _mixture(rng, N_POP)
    targets = np.concatenate([members, nonmembers])
    member = np.r_[np.ones(N_MEMBERS, bool), np.zeros(N_MEMBERS, bool)]

    overfit, reference = Memorizer(members), Memorizer(_mixture(rng, N_MEMBERS))  # reference: own data
    fresh = _mixture(rng, 2 * N_POP + N_SYN)  # the private generator samples the data distribution itself
    mean, cov = fresh.mean(0), np.cov(fresh.T)
    private_dec = LinearDecoder(torch.as_tensor(np.linalg.cholesky(cov)).float(), torch.as_tensor(mean).float())

    def knowledge(g: Memorizer | LinearDecoder, synthetic: np.ndarray, disc: object) -> GenerativeKnowledge:
        return GenerativeKnowledge(
            synthetic=synthetic,
            population=population,
            generator=g,
            discriminator=disc,  # type: ignore[arg-type]
            reference_synthetic=reference.sample(N_SYN, seed=2).numpy(),
            reference_generator=reference,
        )

    private_disc = Memorizer(_mixture(rng, N_MEMBERS)).discriminate  # knows other records, not the targets
    return World(
        targets,
        member,
        knowledge(overfit, overfit.sample(N_SYN, seed=1).numpy(), overfit.discriminate),
        knowledge(private_dec, fresh[:N_SYN], private_disc),
        _mixture(np.random.default_rng(seed + 1000), 2 * N_NULL),  # their own stream: the rest is unchanged
        np.r_[np.ones(N_NULL, bool), np.zeros(N_NULL, bool)],
    )


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(0)


def null_sd(n1: int, n0: int) -> float:
    """The AUC's standard deviation when members and non-members score alike (continuous scores): the
    Mann-Whitney U statistic's, sqrt(n1 n0 (n1 + n0 + 1) / 12), divided by n1 n0."""
    return float(np.sqrt((n1 + n0 + 1) / (12.0 * n1 * n0)))


PARAMS = {  # fewer optimisation steps than the defaults: the toys are easy to invert
    "gan-leaks-wb": {"steps": 30, "n_starts": 2},
    "gan-leaks-wb-cal": {"steps": 30, "n_starts": 1, "nn_pool": 256},
}


@pytest.mark.parametrize("name", GENERATIVE_ATTACKS.available())
def test_overfit_generator_leaks_in_the_member_direction(name: str, world: World) -> None:
    attack = GENERATIVE_ATTACKS.create(name, run_seed=3, **PARAMS.get(name, {}))
    scores = attack.score(world.targets, world.overfit)
    assert scores.shape == (len(world.targets),) and np.isfinite(scores).all()
    assert roc_auc_score(world.member, scores) > 0.75, name


@pytest.mark.parametrize("name", GENERATIVE_ATTACKS.available())
def test_private_generator_is_at_chance(name: str, world: World) -> None:
    """Nothing the private side holds (a generator of the data distribution, a discriminator of other
    records, the reference, the population) depends on the N_NULL + N_NULL fresh targets, so which half is
    labelled member is arbitrary: the AUC is that of two exchangeable samples, mean 1/2, sd null_sd(400, 400)
    = 0.0204. The bound is 4 sd, 0.082: an attack that leaks (e.g. an AUC of 0.6, 4.9 sd) or scores a
    target by its position in the batch fails. (200 targets, the overfit world's, would give sd 0.041, a
    bound of 0.16 that an AUC of 0.6 passes.) Measured, the largest |AUC - 0.5| over the ten attacks for
    make_world(0), (1), (2): 0.038 (logan), 0.028 (gan-leaks-wb-cal), 0.040 (elbo): within 2 sd."""
    attack = GENERATIVE_ATTACKS.create(name, run_seed=3, **PARAMS.get(name, {}))
    scores = attack.score(world.null_targets, world.private)
    assert np.isfinite(scores).all()
    assert abs(roc_auc_score(world.null_member, scores) - 0.5) < 4 * null_sd(N_NULL, N_NULL), name


# ----------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("monte-carlo", {"epsilon": -1.0}, "epsilon must be > 0"),
        ("monte-carlo", {"percentile": 0.0}, "percentile must be in"),
        ("monte-carlo", {"heuristic": "mean"}, "heuristic"),
        ("monte-carlo", {"epsilon": "1"}, "epsilon"),  # strict: a string is not a number
        ("domias", {"bandwidth": -0.1}, "bandwidth must be"),
        ("domias", {"bandwidth": "wide"}, "bandwidth"),
        ("domias", {"max_dim": 0}, "max_dim must be >= 1"),
        ("gan-leaks-wb", {"n_starts": 0}, "n_starts must be >= 1"),
        ("gan-leaks-wb", {"nn_pool": -1}, "nn_pool must be >= 0"),
        ("gan-leaks-wb", {"optimizer": "sgd"}, "optimizer"),
        ("gan-leaks-wb", {"steps": 2.5}, "steps"),
        ("gan-leaks-wb-cal", {"lam": -1.0}, "lam must be >= 0"),
        ("logan", {"batch_size": 0}, "batch_size must be >= 1"),
        ("elbo", {"batch_size": -1}, "batch_size must be >= 1"),
        ("dcr", {"k": 2}, "unknown parameter"),
    ],
)
def test_bad_parameters_raise_input_errors(name: str, params: dict[str, object], match: str) -> None:
    with pytest.raises(ParamsError, match=match) as info:
        GENERATIVE_ATTACKS.create(name, **params)
    assert isinstance(info.value, InputError)  # the CLI exits 2 on these


def test_bad_parameters_of_the_functions_raise_input_errors() -> None:
    x = np.zeros((3, 2))
    with pytest.raises(InputError, match="epsilon"):
        gen.monte_carlo(x, x, epsilon=0.0)
    with pytest.raises(InputError, match="bandwidth"):
        gen.domias(x, x, x, bandwidth=0.0)
    dec, xs = _linear_world()
    with pytest.raises(InputError, match="regularizer"):
        gen.reconstruct(dec, xs, regularizer="l1")  # type: ignore[arg-type]


def test_unknown_attack_names_what_is_available() -> None:
    with pytest.raises(UnknownNameError, match="available: dcr"):
        GENERATIVE_ATTACKS.entry("gan-leak")


def test_attacks_declare_what_they_need(world: World) -> None:
    for name in GENERATIVE_ATTACKS:
        needs = GENERATIVE_ATTACKS.factory(name).needs
        assert needs and needs <= gen.KNOWLEDGE_FIELDS, name
        lacking = dataclasses.replace(world.overfit, **{field: None for field in needs})
        with pytest.raises(MissingKnowledgeError, match=sorted(needs)[0]):
            GENERATIVE_ATTACKS.create(name, **PARAMS.get(name, {})).score(world.targets, lacking)


def test_config_spec_rejects_bad_names_and_values_at_load_time() -> None:
    from pydantic import ValidationError

    from fedmia.experiment.config import GenerativeAttackSpec

    assert GenerativeAttackSpec(name="monte-carlo", params={"percentile": 5.0}).params == {"percentile": 5.0}
    with pytest.raises(ValidationError, match="percentile must be in"):
        GenerativeAttackSpec(name="monte-carlo", params={"percentile": 0.0})
    with pytest.raises(ValidationError, match="unknown parameter"):
        GenerativeAttackSpec(name="domias", params={"kernel": "tophat"})
    with pytest.raises(ValidationError, match="unknown generative attack 'logan-bb'"):
        GenerativeAttackSpec(name="logan-bb")


def test_fedmia_list_shows_the_generative_attacks() -> None:
    from typer.testing import CliRunner

    from fedmia.experiment.cli import app

    result = CliRunner().invoke(app, ["list"], terminal_width=250)
    assert result.exit_code == 0
    assert "gan-leaks-wb-cal" in result.output and "n_starts: int = 4" in result.output
    row = result.output[result.output.index("│ gan-leaks-wb-cal") :].split("│ logan ")[0]  # the entry's rows
    assert "Needs: generator," in row and "reference_generator." in row  # the table may wrap the sentence


def test_a_copied_record_is_at_distance_zero() -> None:
    """Exact copies rank above near copies: no rounding noise from the ||a||^2 + ||b||^2 - 2ab shortcut."""
    rng = np.random.default_rng(9)
    t = rng.normal(0.0, 20.0, size=(30, 64))
    syn = np.concatenate([t[:10], t[10:20] + 1e-4, rng.normal(0.0, 20.0, size=(500, 64))])
    d = gen.nearest_distance(t, syn)
    assert (d[:10] == 0.0).all() and (d[10:20] > 0.0).all()


# ----------------------------------------------------------------------------------------------------------
# against the models layer's VAE and GAN (fedmia.models.generative), trained by train()


@pytest.mark.slow
def test_real_vae_leaks_without_dp_and_not_with_small_epsilon() -> None:
    """Issue 14's end-to-end expectation on a VAE overfit to 100 digits: the distance and density attacks
    beat chance clearly, the white-box ones more so; with DP-SGD at epsilon = 1 every attack is near 0.5.
    Measured with this recipe on seeds 0 (the test's), 1 and 2 (the digits' permutation, model seeds 2s and
    2s + 1): DCR 0.800 / 0.808 / 0.810, DOMIAS 0.635 / 0.606 / 0.663, ELBO 0.938 / 0.926 / 0.941, GAN-Leaks
    white-box 0.927 / 0.931 / 0.935; with DP every attack in [0.471, 0.523] / [0.463, 0.510] / [0.475, 0.517]
    (benchmarks/generative_attacks.py prints them). 200 epochs instead of 300 leaves DOMIAS at 0.617 / 0.584
    / 0.622, no margin over 0.58: the epochs stay."""
    from sklearn.datasets import load_digits

    from fedmia.models import build_model
    from fedmia.models.generative import VAE
    from fedmia.training import DPSpec, Recipe, train

    rng = np.random.default_rng(0)
    x = (load_digits().data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)[rng.permutation(1797)]
    members, nonmembers, population = x[:100], x[100:200], x[200:1000]
    targets, member = np.concatenate([members, nonmembers]), np.r_[np.ones(100), np.zeros(100)]

    def fit(records: np.ndarray, seed: int, dp: DPSpec | None) -> nn.Module:
        model = build_model("vae", (1, 8, 8), 10, seed=seed, latent_dim=8, hidden=[128], sigma=0.2)
        assert isinstance(model, VAE)
        recipe = Recipe(epochs=300, batch_size=32, lr=1e-3, optimizer="adam", momentum=0.0, dp=dp)
        train(model, records, np.zeros(len(records), np.int64), recipe, generator=torch.Generator().manual_seed(seed))
        return model.eval()

    names = ["dcr", "dcr-diff", "domias", "elbo", "gan-leaks-wb", "gan-leaks-wb-cal", "monte-carlo"]
    aucs: dict[str, dict[str, float]] = {}
    for eps in (None, 1.0):
        dp = None if eps is None else DPSpec(target_epsilon=eps, max_grad_norm=1.0)
        model, reference = fit(members, 0, dp), fit(population[:100], 1, dp)
        knowledge = GenerativeKnowledge(
            synthetic=model.sample(2000, seed=1).numpy(),
            population=population,
            generator=model,  # type: ignore[arg-type]
            reference_generator=reference,  # type: ignore[arg-type]
        )
        attacks = {n: GENERATIVE_ATTACKS.create(n, run_seed=0, **PARAMS.get(n, {})) for n in names}
        aucs[str(eps)] = {n: roc_auc_score(member, a.score(targets, knowledge)) for n, a in attacks.items()}
    plain, private = aucs["None"], aucs["1.0"]
    assert plain["dcr"] > 0.7 and plain["domias"] > 0.58, plain
    assert plain["elbo"] > plain["dcr"] and plain["gan-leaks-wb"] > plain["dcr"], plain
    assert all(abs(a - 0.5) < 0.1 for a in private.values()), private


@pytest.mark.slow
def test_an_overfit_gan_leaks_to_dcr_and_domias_and_most_to_logan() -> None:
    """Issue 14's ordering on a real GAN that overfits: 64 digits, 1,000 epochs, a wide discriminator.
    Hayes et al.'s finding: an overfit discriminator scores its training records as real, so the white-box
    LOGAN beats the attacks that see only samples. Measured AUCs on seeds 0 (the test's), 1 and 2 (the
    permutation and the model seed): LOGAN 0.931 / 0.918 / 0.941, DCR 0.659 / 0.625 / 0.669, DOMIAS 0.580 /
    0.592 / 0.603. The discriminator overfits late: at 750 epochs LOGAN is 0.744 / 0.845 / 0.808 (seed 0
    fails, DCR 0.707), at 500 0.640 / 0.684 / 0.654, so the 1,000 epochs stay."""
    from fedmia.data import load_dataset
    from fedmia.models import build_model
    from fedmia.training import Recipe, train

    data = load_dataset("digits")
    perm = np.random.default_rng(0).permutation(data.n)
    members, nonmembers, population = perm[:64], perm[64:128], perm[1000:1500]
    model = build_model("gan", data.input_shape, data.num_classes, seed=0, discriminator_hidden=[256, 256])
    recipe = Recipe(epochs=1000, batch_size=16, lr=5e-4, optimizer="adam")
    train(model, data.x[members], data.y[members], recipe, generator=torch.Generator().manual_seed(0))
    targets = np.concatenate([data.x[members], data.x[nonmembers]])
    truth = np.r_[np.ones(64), np.zeros(64)]
    synthetic = model.sample(2000, seed=1).numpy()
    auc = {
        "dcr": roc_auc_score(truth, gen.dcr(targets, synthetic)),
        "domias": roc_auc_score(truth, gen.domias(targets, synthetic, data.x[population])),
        "logan": roc_auc_score(truth, gen.logan(model.discriminate, targets)),
    }
    assert auc["dcr"] > 0.55 and auc["domias"] > 0.55, auc
    assert auc["logan"] > max(auc["dcr"], auc["domias"]) + 0.1, auc
