"""Generative models: a VAE and a small GAN, registered in ``MODELS`` beside the classifiers.

The interface the generative attacks code against (``fedmia/attacks/generative.py``) is the pair of
protocols below; both models implement ``Generator``, the GAN ``Discriminating``, the VAE ``HasELBO``:

- ``latent_dim: int``; ``sample(n, seed)`` -> float32 (n, *input_shape), drawn from the model's own
  ``torch.Generator`` seeded with ``seed`` (no global RNG); ``decode(z)`` -> (n, *input_shape), the
  VAE's decoder mean or the GAN's generator output for latent codes z (n, latent_dim);
- ``discriminate(x)`` -> logits (n,), higher = "real";
- ``elbo(x)`` -> the per-record evidence lower bound (n,), in nats.

Both are unconditional (the class label is not modelled; ``num_classes`` is ignored), built from
Linear layers and (Leaky)ReLUs only, so Opacus computes their per-sample gradients with its hooks.
A model's training objective is chosen from its ``family`` (``fedmia.training.objectives``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal, Protocol, runtime_checkable

import torch
from pydantic import Field, Strict
from torch import nn
from torch.nn import functional as F

from fedmia.models.base import MODELS, ModelTraits

# Typed parameters with their ranges: the config rejects latent_dim: 0 or a hidden width of 0 (exit 2).
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]

_LOG_2PI = math.log(2 * math.pi)


@runtime_checkable
class Generator(Protocol):
    """A trained generative model as its attacker sees it: latent codes in, records out."""

    latent_dim: int

    def sample(self, n: int, seed: int) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Discriminating(Protocol):
    """A model with a discriminator: logits (n,), higher = judged real (e.g. LOGAN's white-box attack)."""

    def discriminate(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class HasELBO(Protocol):
    """A likelihood model: the per-record ELBO (n,), a lower bound on log p(x)."""

    def elbo(self, x: torch.Tensor) -> torch.Tensor: ...


def _seeded_normal(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard normal draws from a generator of their own (the global RNG is never touched)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))


def _mlp(sizes: Sequence[int], act: type[nn.Module], **act_kwargs: float) -> list[nn.Module]:
    """Linear layers between consecutive ``sizes``, an activation after each but the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act(**act_kwargs))
    return layers


class _GenerativeBase(nn.Module, ABC):
    family: ClassVar[str]

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.dim = math.prod(self.input_shape)
        self.latent_dim = int(latent_dim)

    def _unflatten(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.reshape(len(flat), *self.input_shape)

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        """``n`` records decoded from z ~ N(0, I) drawn with ``seed``: float32 (n, *input_shape)."""
        if n < 0:
            raise ValueError(f"cannot sample {n} records")
        was_training = self.training
        self.eval()
        out = self.decode(_seeded_normal((int(n), self.latent_dim), seed))
        self.train(was_training)
        return out.float()

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Records (n, *input_shape) from latent codes z (n, latent_dim)."""


class VAE(_GenerativeBase):
    """Variational autoencoder (Kingma & Welling, ICLR 2014) with MLP encoder and decoder.

    q(z|x) = N(mu(x), diag(exp(logvar(x)))), p(z) = N(0, I), and per record

        ELBO(x) = E_{q(z|x)} [log p(x|z)] - KL(q(z|x) || p(z)),
        KL      = 1/2 sum_j (mu_j^2 + exp(logvar_j) - logvar_j - 1)           (closed form),

    the expectation estimated with reparameterized draws z = mu + exp(logvar / 2) * eps, eps ~ N(0, I).
    Likelihoods p(x|z), summed over the d features of the flattened record, in nats:

    - ``gaussian`` (default; for fedmia's standardized tabular data and for [0, 1] pixels alike):
      log N(x; m(z), sigma^2 I) = -1/2 sum_i ((x_i - m_i) / sigma)^2 - d log sigma - d/2 log(2 pi),
      with a fixed observation std ``sigma`` (a model parameter, not learned: a learned variance
      would be a parameter outside Opacus' per-sample layers). ``decode`` returns m(z).
    - ``bernoulli``: sum_i x_i log p_i + (1 - x_i) log(1 - p_i), p = sigmoid(decoder logits); for data
      scaled to [0, 1] (digits). For non-binary x this is the usual "binarized" VAE loss, not a
      normalized density (the continuous Bernoulli's normalizer, Loaiza-Ganem & Cunningham 2019, is
      left out), so its ELBO is comparable between records and models, not with the gaussian one.
      ``decode`` returns p(z).
    """

    family: ClassVar[str] = "vae"

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        hidden: Sequence[int],
        likelihood: str,
        sigma: float,
    ) -> None:
        super().__init__(input_shape, latent_dim)
        if likelihood not in ("gaussian", "bernoulli"):
            raise ValueError(f"vae likelihood must be 'gaussian' or 'bernoulli', got {likelihood!r}")
        self.likelihood = likelihood
        self.sigma = float(sigma)
        hidden = [int(h) for h in hidden]
        encoder: list[nn.Module] = [nn.Flatten()]
        for a, b in zip([self.dim, *hidden], hidden, strict=False):  # no hidden layer: x goes to the head
            encoder += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*encoder)
        self.posterior = nn.Linear(hidden[-1] if hidden else self.dim, 2 * self.latent_dim)  # mu, logvar
        self.decoder = nn.Sequential(*_mlp([self.latent_dim, *hidden[::-1], self.dim], nn.ReLU))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (n, latent_dim), of q(z|x)."""
        mu, logvar = self.posterior(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        return self._unflatten(torch.sigmoid(out) if self.likelihood == "bernoulli" else out)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per record (n,), in nats."""
        flat_x = x.reshape(len(x), self.dim)  # explicit width: an empty (Poisson) batch has no -1
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, flat_x, reduction="none").sum(1)
        resid = (flat_x - out) / self.sigma
        return -0.5 * (resid**2).sum(1) - self.dim * (math.log(self.sigma) + 0.5 * _LOG_2PI)

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, diag exp(logvar)) || N(0, I)) per record (n,)."""
        return 0.5 * (mu**2 + logvar.exp() - logvar - 1.0).sum(1)

    def neg_elbo(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """-ELBO per record (n,) with the reparameterization noise ``eps`` (n, latent_dim): the training loss."""
        mu, logvar = self.encode(x)
        z = mu + (0.5 * logvar).exp() * eps
        return self.kl(mu, logvar) - self.log_likelihood(x, z)

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, *, samples: int = 16, seed: int = 0) -> torch.Tensor:
        """Per-record ELBO (n,): the reconstruction term averaged over ``samples`` draws seeded by ``seed``
        (deterministic for given x), the KL term in closed form."""
        if samples < 1:
            raise ValueError(f"elbo needs samples >= 1, got {samples}")
        was_training = self.training
        self.eval()
        x = torch.as_tensor(x, dtype=torch.float32)
        mu, logvar = self.encode(x)
        std = (0.5 * logvar).exp()
        eps = _seeded_normal((samples, len(x), self.latent_dim), seed)
        rec = torch.stack([self.log_likelihood(x, mu + std * e) for e in eps]).mean(0)
        self.train(was_training)
        return rec - self.kl(mu, logvar)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction decode(mu(x)) (deterministic)."""
        return self.decode(self.encode(x)[0])


class GAN(_GenerativeBase):
    """A generative adversarial network (Goodfellow et al., NeurIPS 2014): MLP ``generator`` G(z) and
    ``discriminator`` D(x) (one logit), trained by ``fedmia.training.objectives`` with the
    non-saturating losses. Hidden layers use LeakyReLU(0.2) (DCGAN's choice, Radford et al. 2016)."""

    family: ClassVar[str] = "gan"

    def __init__(
        self,
        input_shape: tuple[int, ...],
        latent_dim: int,
        hidden: Sequence[int],
        discriminator_hidden: Sequence[int],
        output: str,
    ) -> None:
        super().__init__(input_shape, latent_dim)
        if output not in ("linear", "sigmoid"):
            raise ValueError(f"gan output must be 'linear' or 'sigmoid', got {output!r}")
        self.output = output
        g = _mlp([self.latent_dim, *[int(h) for h in hidden], self.dim], nn.LeakyReLU, negative_slope=0.2)
        self.generator = nn.Sequential(*g, *([nn.Sigmoid()] if output == "sigmoid" else []))
        d = _mlp([self.dim, *[int(h) for h in discriminator_hidden], 1], nn.LeakyReLU, negative_slope=0.2)
        self.discriminator = nn.Sequential(nn.Flatten(), *d)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._unflatten(self.generator(z))

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """D's logits (n,); sigmoid of it is D's probability that x is real."""
        return self.discriminator(torch.as_tensor(x, dtype=torch.float32)).reshape(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminate(x)


@MODELS.register("vae", traits=ModelTraits(family="vae"))
def vae(
    input_shape: tuple[int, ...],
    num_classes: int,
    latent_dim: PositiveInt = 8,
    hidden: Sequence[PositiveInt] = (128,),
    likelihood: Literal["gaussian", "bernoulli"] = "gaussian",
    sigma: PositiveFloat = 0.5,
) -> nn.Module:
    """Variational autoencoder (MLP encoder/decoder, Gaussian latent); gaussian likelihood with fixed std
    ``sigma`` (standardized data) or bernoulli (data in [0, 1]). Unconditional: labels are ignored."""
    return VAE(input_shape, latent_dim, hidden, likelihood, sigma)


@MODELS.register("gan", traits=ModelTraits(family="gan"))
def gan(
    input_shape: tuple[int, ...],
    num_classes: int,
    latent_dim: PositiveInt = 16,
    hidden: Sequence[PositiveInt] = (128,),
    discriminator_hidden: Sequence[PositiveInt] = (128,),
    output: Literal["linear", "sigmoid"] = "linear",
) -> nn.Module:
    """GAN: MLP generator (``output`` sigmoid for data in [0, 1], linear for standardized data) and MLP
    discriminator, trained with the non-saturating losses. Unconditional: labels are ignored."""
    return GAN(input_shape, latent_dim, hidden, discriminator_hidden, output)
