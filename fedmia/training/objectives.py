"""Training objectives, one per model family: the plug-ins of ``train()``'s one loop (DESIGN rule 2).

``train()`` owns the loop (epochs, batches, Poisson sampling, DP-SGD, FedProx, bookkeeping); the
model's family (``fedmia.models.family_of``) picks the objective, which says what the loop's optimizer
trains (``trained``), the loss of a batch, and what happens around a step:

- ``classifier``: cross-entropy (with label smoothing), or weighted smoothing's loss, plus adversarial
  regularization's penalty; the training-time defenses are classifier options.
- ``vae``: the negative ELBO, mean over the batch (Kingma & Welling 2014; ``VAE`` has the equations);
  the reparameterization noise eps ~ N(0, I) is drawn from ``train()``'s generator. With DP-SGD the
  whole VAE (encoder and decoder) is the private module: every parameter sees the records.
- ``gan``: the alternating updates of Goodfellow et al. (NeurIPS 2014, Algorithm 1, with k = 1
  discriminator step per generator step) with the non-saturating generator loss (their Sec. 3):

      L_D = -mean_i log sigma(D(x_i)) - mean_i log(1 - sigma(D(G(z_i)))),    z_i ~ N(0, I),
      L_G = -mean_j log sigma(D(G(z_j))),

  both as ``binary_cross_entropy_with_logits``. The loop's optimizer (and DP-SGD) trains the
  discriminator on L_D, one fake per real record of the batch; after each discriminator step the
  objective takes one generator step with its own optimizer (the recipe's, on ``model.generator``)
  on a batch of ``batch_size`` fresh latent codes.

DP-GAN: only the discriminator touches the records, so DP-SGD is applied to it alone (as in DP-GAN
work, e.g. Xie et al. 2018 "Differentially Private Generative Adversarial Network", Torkzadehmahani
et al. 2019 DP-CGAN, and Opacus' DCGAN example); the generator's updates are functions of the private
discriminators and of noise only, so the generator, and everything sampled from it, is post-processing
of the discriminator's DP-SGD and covered by the same (epsilon, delta). Per-sample clipping pairs
real record i with fake i: Opacus sums the two forward passes' per-sample gradients index by index
("the recursive network" of its DCGAN example) before clipping, so one record's contribution stays
bounded by the clipping norm; the accountant counts one step per discriminator step with the loader's
sampling rate. During the generator's step the discriminator's Opacus hooks are switched off (its
per-sample gradients are not needed, and would otherwise be left on its parameters).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from fedmia.models import family_of, predict_logits
from fedmia.registry import Registry
from fedmia.training.advreg import AdversarialGame
from fedmia.training.optim import make_optimizer
from fedmia.training.weighted_smoothing import SmoothingWeights, weighted_smoothing_loss

if TYPE_CHECKING:
    from fedmia.training.train import Recipe


class Objective(ABC):
    """The hooks ``train()``'s loop calls; the defaults do nothing, and every family defines ``loss``."""

    family = "classifier"

    @classmethod  # noqa: B027 - an optional hook: nothing by default
    def check(cls, recipe: Recipe) -> None:
        """Raise ValueError for recipe options this family cannot train with."""

    @classmethod
    def trained(cls, model: nn.Module) -> nn.Module:
        """The module the loop's optimizer trains (and DP-SGD makes private)."""
        return model

    def start_epoch(self, model: nn.Module, epoch: int) -> None:  # noqa: B027 - an optional hook: nothing by default
        pass

    def before_step(self, model: nn.Module, generator: torch.Generator) -> None:  # noqa: B027 - an optional hook: nothing by default
        pass

    @abstractmethod
    def loss(
        self,
        module: nn.Module,
        model: nn.Module,
        xb: torch.Tensor,
        yb: torch.Tensor,
        idx: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The batch's loss (a mean over the batch, as Opacus' loss_reduction="mean" expects).

        ``module`` is ``trained(model)`` as the loop holds it (Opacus' wrapper under DP-SGD)."""

    def after_step(self, module: nn.Module, model: nn.Module, generator: torch.Generator) -> None:  # noqa: B027 - an optional hook: nothing by default
        pass

    def finish(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        """(training accuracy, further metrics) after training; generators have no accuracy (NaN)."""
        return math.nan, {}


OBJECTIVES: Registry[Objective] = Registry(
    "objective", exclude=("model", "recipe", "x", "y", "batch_size", "generator", "reference", "start")
)

_GENERATIVE_UNSUPPORTED = (
    ("label_smoothing", lambda r: r.label_smoothing > 0),
    ("early_stopping", lambda r: r.early_stopping is not None),
    ("adversarial regularization", lambda r: r.adversarial is not None),
    ("weighted smoothing", lambda r: r.weighted_smoothing is not None),
)


def _check_generative(family: str, recipe: Recipe) -> None:
    for name, used in _GENERATIVE_UNSUPPORTED:
        if used(recipe):
            raise ValueError(f"{name} is a classifier defense; a {family} model cannot train with it")


def _proximal(params: list[nn.Parameter], start: list[torch.Tensor] | None, mu: float) -> torch.Tensor | float:
    """FedProx's (mu / 2) ||w - w_start||^2 over ``params``, or 0."""
    if start is None:
        return 0.0
    return 0.5 * mu * sum(((p - s) ** 2).sum() for p, s in zip(params, start, strict=True))


@OBJECTIVES.register("classifier")
class ClassifierObjective(Objective):
    """Cross-entropy with the classifier defenses (label smoothing, weighted smoothing, adversarial
    regularization); see ``train.py`` and the defenses' modules for their equations."""

    family = "classifier"

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        reference: tuple[torch.Tensor, torch.Tensor] | None,
        start: list[torch.Tensor] | None,
    ) -> None:
        self.recipe = recipe
        self.x, self.y = x, y
        self.reference = reference
        self.game = None
        if recipe.adversarial is not None:
            assert reference is not None
            num_classes = int(predict_logits(model, x[:1]).shape[1])
            self.game = AdversarialGame(recipe.adversarial, num_classes, batch_size, generator)
        ws = recipe.weighted_smoothing
        self.smoothing = SmoothingWeights(ws) if ws is not None else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        if self.smoothing is not None:
            self.smoothing.update(model, self.x, self.y, epoch)

    def before_step(self, model: nn.Module, generator: torch.Generator) -> None:
        if self.game is not None:
            assert self.reference is not None
            self.game.train_inference(model, (self.x, self.y), self.reference, generator)

    def loss(
        self,
        module: nn.Module,
        model: nn.Module,
        xb: torch.Tensor,
        yb: torch.Tensor,
        idx: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        logits = module(xb)
        if not len(yb):
            loss = logits.sum() * 0.0
        elif self.smoothing is not None and self.smoothing.weights is not None:
            assert idx is not None and self.recipe.weighted_smoothing is not None
            w = self.smoothing.weights[idx]
            loss = weighted_smoothing_loss(logits, yb, w, self.recipe.weighted_smoothing.noise_std, generator)
        else:
            loss = self.criterion(logits, yb)
        if self.game is not None and len(yb):
            loss = loss + self.game.penalty(logits, yb)
        return loss

    def finish(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        return float((predict_logits(model, self.x).argmax(1) == self.y.cpu()).float().mean()), {}


@OBJECTIVES.register("vae")
class VAEObjective(Objective):
    """The negative ELBO, mean over the batch, one reparameterized draw per record (Kingma & Welling 2014)."""

    family = "vae"

    def __init__(self, model: nn.Module, x: torch.Tensor, **_: Any) -> None:
        self.x = x

    @classmethod
    def check(cls, recipe: Recipe) -> None:
        _check_generative(cls.family, recipe)

    def loss(
        self,
        module: nn.Module,
        model: nn.Module,
        xb: torch.Tensor,
        yb: torch.Tensor,
        idx: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        eps = torch.randn((len(xb), model.latent_dim), generator=generator)  # type: ignore[arg-type]
        per_record = model.neg_elbo(xb, eps)  # type: ignore[operator]
        return per_record.mean() if len(xb) else per_record.sum() * 0.0

    def finish(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        return math.nan, {"elbo": float(model.elbo(self.x).mean())}  # type: ignore[operator]


@OBJECTIVES.register("gan")
class GANObjective(Objective):
    """Alternating non-saturating GAN updates; the loop trains the discriminator (see the module docstring)."""

    family = "gan"

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        batch_size: int,
        start: list[torch.Tensor] | None,
        **_: Any,
    ) -> None:
        generator_params = list(model.generator.parameters())  # type: ignore[union-attr]
        self.g_optimizer = make_optimizer(generator_params, recipe)
        self.g_start = [p.detach().clone() for p in generator_params] if start is not None else None
        self.mu = recipe.proximal_mu
        self.batch_size = batch_size
        self.g_total, self.g_count = 0.0, 0
        self.g_loss = math.nan

    @classmethod
    def check(cls, recipe: Recipe) -> None:
        _check_generative(cls.family, recipe)

    @classmethod
    def trained(cls, model: nn.Module) -> nn.Module:
        return model.discriminator  # type: ignore[return-value]

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        self.g_total, self.g_count = 0.0, 0

    def loss(
        self,
        module: nn.Module,
        model: nn.Module,
        xb: torch.Tensor,
        yb: torch.Tensor,
        idx: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        z = torch.randn((len(xb), model.latent_dim), generator=generator)  # type: ignore[arg-type]
        with torch.no_grad():  # L_D trains D only
            fake = model.decode(z)  # type: ignore[operator]
        real_logit, fake_logit = module(xb).reshape(-1), module(fake).reshape(-1)
        if not len(xb):
            return real_logit.sum() * 0.0 + fake_logit.sum() * 0.0
        return F.binary_cross_entropy_with_logits(
            real_logit, torch.ones_like(real_logit)
        ) + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))

    def after_step(self, module: nn.Module, model: nn.Module, generator: torch.Generator) -> None:
        """One generator step on L_G (D's weights are not updated; its gradients are discarded)."""
        hooks = getattr(module, "hooks_enabled", False)  # Opacus' GradSampleModule around D
        if hooks:
            module.disable_hooks()  # type: ignore[operator]
        try:
            z = torch.randn((self.batch_size, model.latent_dim), generator=generator)  # type: ignore[arg-type]
            self.g_optimizer.zero_grad(set_to_none=True)
            logit = module(model.decode(z)).reshape(-1)  # type: ignore[operator]
            loss = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
            g_params = list(model.generator.parameters())  # type: ignore[union-attr]
            (loss + _proximal(g_params, self.g_start, self.mu)).backward()
            self.g_optimizer.step()
        finally:
            for p in model.discriminator.parameters():  # type: ignore[union-attr]
                p.grad = None
            if hooks:
                module.enable_hooks()  # type: ignore[operator]
        self.g_total += float(loss.detach()) * self.batch_size
        self.g_count += self.batch_size

    def finish(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        return math.nan, {"generator_loss": self.g_total / max(self.g_count, 1)}


def objective_class(model: nn.Module) -> type[Objective]:
    """The objective of ``model``'s family."""
    return OBJECTIVES.factory(family_of(model))  # type: ignore[return-value]


def make_objective(model: nn.Module, **kwargs: Any) -> Objective:
    return OBJECTIVES.create(family_of(model), model=model, **kwargs)
