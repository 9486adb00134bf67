"""The one training path: targets, reference/shadow models and every FL client call ``train()``.

DP-SGD is an option of this path (Opacus wraps the same model, optimizer and loader), not a copy.
So is the model family: its objective (classifier, VAE, GAN; ``objectives.py``) is a plug-in of the loop.
So are the training-time membership-inference defenses (``Recipe`` fields, all off by default):
label smoothing, early stopping, adversarial regularization (``advreg.py``) and weighted smoothing
(``weighted_smoothing.py``). L2 is the recipe's ``weight_decay``; dropout is a model parameter.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmia.models import DEVICES, family_of, has_dropout, model_device, predict_logits, resolve_device
from fedmia.training.augment import Augmentation, check_augment, check_images
from fedmia.training.divergence import check_training
from fedmia.training.objectives import OBJECTIVES, make_objective, objective_class
from fedmia.training.optim import make_optimizer

# Opacus' hooks fire a full-backward-hook notice on the first layer (inputs need no grad), and its
# RDP accountant warns when the best order is the smallest alpha (very large epsilon): both noise.
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPSpec:
    """DP-SGD settings. Give ``noise_multiplier`` or ``target_epsilon`` (then noise is calibrated)."""

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    # False: shuffled fixed-size batches (deterministic batches for oracle tests); train() then reports no
    # epsilon, since the accountant's assumes Poisson sampling (Chua et al. 2024)
    poisson_sampling: bool = True


@dataclass(frozen=True)
class EarlyStopping:
    """Early stopping on validation records the data owner holds out (Caruana et al. 2001;
    as an MIA defense e.g. Song & Mittal 2021, Sec. "early stopping").

    ``validation`` is the share of the owner's records held out as the validation set V (carved by the
    owner before training, ``MembershipPlan.with_holdout``; never trained on, so neither member nor
    non-member of the model, DESIGN rule 12) and handed to ``train()`` as ``HeldOut.validation``; after every
    epoch the validation loss L_val(e) = mean_{(x,y) in V} -log softmax(f_e(x))_y
    (plain cross-entropy, eval mode) is measured; training stops once ``patience`` epochs in a row
    bring no strict improvement of min_e L_val(e), and the weights of argmin_e L_val(e) are restored.
    ``Recipe.epochs`` is the maximum.
    """

    validation: float = 0.2
    patience: int = 3

    def __post_init__(self) -> None:
        if not 0.0 < self.validation < 1.0:
            raise ValueError(f"early stopping validation must be in (0, 1), got {self.validation}")
        if self.patience < 1:
            raise ValueError(f"early stopping patience must be >= 1, got {self.patience}")


@dataclass(frozen=True)
class AdversarialRegularization:
    """Adversarial regularization (Nasr, Shokri & Houmansadr, CCS 2018); see ``advreg.py`` for the
    objectives. ``strength`` is lambda, ``reference_fraction`` the share of the owner's records
    (after early stopping's validation share) held out as the reference set D' (never trained on; handed to
    ``train()`` as ``HeldOut.reference``), ``inference_steps`` the k steps of the
    inference model h per classifier step, ``inference_lr`` h's Adam learning rate."""

    strength: float = 1.0
    reference_fraction: float = 0.2
    inference_steps: int = 1
    inference_lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.strength < 0:
            raise ValueError(f"adversarial regularization strength must be >= 0, got {self.strength}")
        if not 0.0 < self.reference_fraction < 1.0:
            raise ValueError(f"reference_fraction must be in (0, 1), got {self.reference_fraction}")
        if self.inference_steps < 1:
            raise ValueError(f"inference_steps must be >= 1, got {self.inference_steps}")
        if self.inference_lr <= 0:
            raise ValueError(f"inference_lr must be > 0, got {self.inference_lr}")


@dataclass(frozen=True)
class WeightedSmoothing:
    """Weighted smoothing (Tan, Xie, Sun & Wang, ACSAC 2023, and its public code
    github.com/BennyTMT/weighted-smoothing); see ``weighted_smoothing.py`` for the equations.
    ``noise_std`` is sigma (the code's ``randStd``); the first ``warmup_epochs`` epochs train without
    noise (the code's ``initEp = 2`` gives 4), after which per-record weights are recomputed from the
    current model before every epoch. ``max_grad_norm`` clips the gradient's global L2 norm at every
    step, as the code's training loop does (``clip_grad_norm_(..., max_norm=10.0)``); without it the
    -log of a noisy probability near 0 gives exploding steps (measured: a digits MLP diverges); None
    switches it off."""

    noise_std: float = 0.03
    warmup_epochs: int = 4
    max_grad_norm: float | None = 10.0

    def __post_init__(self) -> None:
        if self.noise_std < 0:
            raise ValueError(f"weighted smoothing noise_std must be >= 0, got {self.noise_std}")
        if self.warmup_epochs < 0:
            raise ValueError(f"weighted smoothing warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"weighted smoothing max_grad_norm must be > 0 or None, got {self.max_grad_norm}")


@dataclass(frozen=True)
class Recipe:
    """How a model is trained; shared by the target and the attacker's references/shadows."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    proximal_mu: float = 0.0  # FedProx: (mu/2)||w - w_start||^2 pulls towards the starting weights
    dp: DPSpec | None = None
    # Label smoothing (Szegedy et al. 2016): the target is (1 - eps) one_hot(y) + eps / C, i.e. the loss is
    # (1 - eps) CE(f(x), y) + eps mean_c(-log p_c); torch's CrossEntropyLoss(label_smoothing=eps).
    label_smoothing: float = 0.0
    early_stopping: EarlyStopping | None = None
    adversarial: AdversarialRegularization | None = None
    weighted_smoothing: WeightedSmoothing | None = None
    # where the arithmetic runs: "cpu", "cuda" or "auto" (cuda if available); models come back on the CPU
    device: str = "cpu"
    # data augmentation of every training batch (``augment.py``): () none, or "crop" (padding 4) and/or "flip"
    augment: tuple[str, ...] = ()
    # train.function: the import path of a user's training function that replaces this loop (``user.py``)
    function: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "augment", check_augment(self.augment))
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.device.split(":")[0] not in DEVICES:
            raise ValueError(f"device must be one of {list(DEVICES)}, got {self.device!r}")


@dataclass
class TrainResult:
    model: nn.Module
    loss: float  # mean training loss over the last epoch
    accuracy: float  # accuracy on the training records after training (NaN for generative models)
    steps: int  # optimizer steps taken
    epsilon: float | None = None  # cumulative over ``privacy_history`` plus this call
    noise_multiplier: float | None = None
    privacy_history: list[tuple[float, float, int]] = field(default_factory=list)
    epochs_run: int = 0  # epochs trained (fewer than the recipe's when early stopping stopped)
    stopped_early: bool = False
    metrics: dict[str, float] = field(default_factory=dict)  # the objective's own (a VAE's mean ELBO, ...)
    # positions in (x, y) that train() split off itself (no ``held_out`` given) and never trained on
    held_out: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # adversarial regularization: the inference model h and its optimizer at the end (``AdversarialGame.state``),
    # for a trainer that continues the game in its next call (an FL client's next round)
    inference_state: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class HeldOut:
    """Records a trainer holds out of its gradient steps: early stopping's validation set V and adversarial
    regularization's reference set D' (each (x, y), or None).

    Why they come from outside the training records: a record is a member of a model only if that model's
    gradient steps used it, and a held-out record is neither member nor non-member (DESIGN rule 12). So
    the owner carves them before training (the target: ``MembershipPlan.with_holdout``, removed from the
    members and the candidates, as the test split is; an FL client: its own fixed share, the same every
    round), and an attacker's reference model draws them from records OUT for it
    (``references.out_holdouts``): every record ``train()`` is given is trained on, so the members of the
    plan and each reference's ``keep`` row are exactly what each model trained on. This is also what the
    papers do: Nasr et al. 2018 draw D' from data separate from the training set, and early stopping
    validates on separate data."""

    validation: tuple[np.ndarray, np.ndarray] | None = None
    reference: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def of(x: np.ndarray, y: np.ndarray, validation: np.ndarray | None, reference: np.ndarray | None) -> HeldOut:
        """The held-out records at positions ``validation`` and ``reference`` of (x, y) (None or empty: none)."""

        def pick(idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
            return None if idx is None or len(idx) == 0 else (x[idx], y[idx])

        return HeldOut(pick(validation), pick(reference))


def holdout_fractions(recipe: Recipe) -> tuple[float, float]:
    """(validation share, reference share) of the owner's records that ``recipe``'s defenses hold out:
    early stopping's of all of them, then adversarial regularization's of the rest (0 when off)."""
    v = recipe.early_stopping.validation if recipe.early_stopping is not None else 0.0
    r = recipe.adversarial.reference_fraction if recipe.adversarial is not None else 0.0
    return v, r


def holdout_count(n: int, fraction: float) -> int:
    """How many of ``n`` records a share ``fraction`` holds out: round(fraction * n), at least one and
    leaving at least one (0 when ``fraction`` is 0)."""
    if fraction <= 0:
        return 0
    if n < 2:
        raise ValueError(f"cannot hold out records from {n} record(s): need at least 2")
    return min(max(int(round(fraction * n)), 1), n - 1)


def holdout_sizes(n_trained: int, recipe: Recipe) -> tuple[int, int]:
    """(|V|, |D'|) for a trainer that trains on ``n_trained`` records and holds out as the owner of
    N = n_trained / ((1 - v)(1 - r)) records would (``holdout_fractions``): |V| = round(v N),
    |D'| = round(r (N - |V|)), each at least one when its defense is on. An attacker's reference model
    uses it to hold out as many records as the target's owner did, beside a training set of the target's size."""
    v, r = holdout_fractions(recipe)
    if v == 0 and r == 0:
        return 0, 0
    total = int(round(n_trained / ((1 - v) * (1 - r))))
    n_val = max(int(round(v * total)), 1) if v > 0 else 0
    n_ref = max(int(round(r * (total - n_val))), 1) if r > 0 else 0
    return n_val, n_ref


def holdout_split(n: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) record positions, each sorted: ``round(fraction * n)`` records (at least one,
    leaving at least one) drawn by a permutation from ``generator``."""
    held = holdout_count(n, fraction)
    perm = torch.randperm(n, generator=generator)
    return perm[held:].sort().values, perm[:held].sort().values


def check_recipe(recipe: Recipe, family: str = "classifier") -> None:
    """Raise ValueError for combinations of options that ``train()`` cannot run soundly, on a model of
    ``family`` (the generative families take none of the classifier defenses)."""
    OBJECTIVES.factory(family).check(recipe)  # type: ignore[attr-defined]
    if recipe.dp is not None and recipe.adversarial is not None:
        raise ValueError(
            "adversarial regularization cannot be combined with DP-SGD: the inference model is fitted to "
            "the training records without privacy and its gradient enters every classifier step, so the "
            "DP accounting would not cover the released model"
        )
    if recipe.dp is not None and recipe.weighted_smoothing is not None:
        raise ValueError(
            "weighted smoothing cannot be combined with DP-SGD: each record's noise scale is standardized "
            "over all records of its class, so one record's clipped gradient depends on the others and "
            "per-sample clipping no longer bounds its sensitivity"
        )
    if recipe.weighted_smoothing is not None and recipe.label_smoothing > 0:
        raise ValueError("weighted smoothing replaces the cross-entropy; it is not defined with label smoothing")


@contextlib.contextmanager
def dropout_rng(
    models: list[nn.Module], generators: list[torch.Generator], device: torch.device | None = None
) -> Iterator[None]:
    """If any model has dropout (p > 0), seed torch's global RNG, which dropout masks draw from, from
    one seed per generator, inside ``fork_rng`` (the caller's global RNG, and that of a CUDA
    ``device``, are left as they were). Without dropout nothing is drawn, so the generators' streams
    are unchanged."""
    if not any(has_dropout(m) for m in models):
        yield
        return
    seeds = [int(torch.randint(0, 2**62, (1,), generator=g)) for g in generators]
    seed = seeds[0]
    for s in seeds[1:]:
        seed = (seed * 1_000_003 + s) % 2**62
    cuda = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One epoch's batches of record positions: a fresh permutation cut into consecutive slices
    (the last one smaller), as a shuffling DataLoader without drop_last makes them."""
    return torch.randperm(n, generator=generator).split(batch_size)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    recipe: Recipe,
    *,
    generator: torch.Generator,
    privacy_history: list[tuple[float, float, int]] | None = None,
    epsilon_horizon_epochs: int | None = None,
    held_out: HeldOut | None = None,
    inference_state: dict[str, torch.Tensor] | None = None,
    dp_optimizer_hook: Callable[[torch.optim.Optimizer], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on (x, y) with ``recipe``; batches and DP noise come from ``generator``.
    Every record of (x, y) is trained on, unless ``held_out`` is None and a defense needs held-out records.

    With DP, ``privacy_history`` (Opacus accountant history from earlier calls, e.g. earlier FL
    rounds) is continued, so the returned epsilon is cumulative. ``epsilon_horizon_epochs`` is
    the number of epochs over which a ``target_epsilon`` is to be spent (default: this call's).

    Defenses (``Recipe`` fields) that hold records out (early stopping's validation set, adversarial
    regularization's reference set D') take them from ``held_out`` (see ``HeldOut`` for why they come from
    outside (x, y)); a defense whose part of ``held_out`` is missing is a ValueError. Only without
    ``held_out`` at all does ``train()`` split them off (x, y) itself, from ``generator`` (early stopping's
    share, then D' from the rest), and ``TrainResult.held_out`` names those positions: they are neither
    members nor non-members of the model, and a caller that audits membership must drop them.
    With DP, early stopping's epoch choice depends on the validation records,
    which the accountant does not cover (they are not in the DP-trained set). A model with dropout has
    its masks drawn from a seed drawn from ``generator`` (global RNG forked, left untouched). With
    every defense off, nothing extra is drawn from ``generator``.

    ``inference_state``: adversarial regularization's inference model h (and its optimizer) from an earlier
    call's ``TrainResult.inference_state``, so that training split over calls (FL rounds) plays one game
    (h is still initialized from ``generator`` first, then replaced, so the draws are those of a fresh h).

    ``dp_optimizer_hook`` (DP only): called once with Opacus's DPOptimizer after ``make_private``, before the
    first step; an auditor's white-box canary insertion (``fedmia.audit.canaries``) attaches itself there.
    """
    if len(y) == 0:
        raise ValueError("train() needs at least one record")
    if recipe.function is not None:  # the user's training function is the loop (fedmia.training.user)
        from fedmia.training.user import train_with_function

        accuracy = train_with_function(model, x, y, recipe, generator)
        return TrainResult(model, loss=float("nan"), accuracy=accuracy, steps=0, epochs_run=recipe.epochs)
    if dp_optimizer_hook is not None and recipe.dp is None:
        raise ValueError("dp_optimizer_hook needs DP-SGD (recipe.dp)")
    check_recipe(recipe, family_of(model))
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    check_images(xt, recipe.augment)
    validation = reference = None
    split_off = np.zeros(0, dtype=np.int64)
    if held_out is not None:  # the owner's held-out records: (x, y) is trained on, all of it
        if recipe.early_stopping is not None:
            if held_out.validation is None or len(held_out.validation[1]) == 0:
                raise ValueError("early stopping needs validation records: held_out.validation is empty")
            validation = (torch.as_tensor(held_out.validation[0]), torch.as_tensor(held_out.validation[1]))
        if recipe.adversarial is not None:
            if held_out.reference is None or len(held_out.reference[1]) == 0:
                raise ValueError("adversarial regularization needs a reference set D': held_out.reference is empty")
            reference = (torch.as_tensor(held_out.reference[0]), torch.as_tensor(held_out.reference[1]))
    else:  # split off (x, y) here; the positions go back in TrainResult.held_out
        position = torch.arange(len(yt))
        if recipe.early_stopping is not None:  # held-out records are split off first, then never trained on
            keep, held = holdout_split(len(yt), recipe.early_stopping.validation, generator)
            validation, xt, yt = (xt[held], yt[held]), xt[keep], yt[keep]
            split_off, position = np.concatenate([split_off, position[held].numpy()]), position[keep]
        if recipe.adversarial is not None:
            keep, held = holdout_split(len(yt), recipe.adversarial.reference_fraction, generator)
            reference, xt, yt = (xt[held], yt[held]), xt[keep], yt[keep]
            split_off, position = np.concatenate([split_off, position[held].numpy()]), position[keep]
    device = training_device(recipe)
    home = model_device(model)
    model.to(device)
    xt, yt = xt.to(device), yt.to(device)
    validation = None if validation is None else (validation[0].to(device), validation[1].to(device))
    reference = None if reference is None else (reference[0].to(device), reference[1].to(device))
    try:
        with dropout_rng([model], [generator], device):
            result = _train(
                model,
                xt,
                yt,
                recipe,
                generator,
                privacy_history,
                epsilon_horizon_epochs,
                validation,
                reference,
                inference_state,
                dp_optimizer_hook,
            )
        result.held_out = np.sort(split_off).astype(np.int64)
        return result
    finally:
        model.to(home)


def training_device(recipe: Recipe) -> torch.device:
    """Where ``train()`` runs this recipe: ``recipe.device`` resolved (see ``resolve_device``), except
    that DP-SGD, adversarial regularization and weighted smoothing stay on the CPU: their noise and
    sampling draw from the CPU ``generator`` that makes them reproducible (logged when it matters)."""
    device = resolve_device(recipe.device)
    if device.type != "cpu" and (
        recipe.dp is not None or recipe.adversarial is not None or recipe.weighted_smoothing is not None
    ):
        log.info("training on the CPU: DP-SGD, adversarial regularization, weighted smoothing use a CPU generator")
        return torch.device("cpu")
    return device


def _train(
    model: nn.Module,
    xt: torch.Tensor,
    yt: torch.Tensor,
    recipe: Recipe,
    generator: torch.Generator,
    privacy_history: list[tuple[float, float, int]] | None,
    epsilon_horizon_epochs: int | None,
    validation: tuple[torch.Tensor, torch.Tensor] | None,
    reference: tuple[torch.Tensor, torch.Tensor] | None,
    inference_state: dict[str, torch.Tensor] | None = None,
    dp_optimizer_hook: Callable[[torch.optim.Optimizer], None] | None = None,
) -> TrainResult:
    batch_size = min(recipe.batch_size, len(yt))
    # Opacus needs a DataLoader (its sample rate is 1 / len(loader)); it is iterated only under Poisson
    # sampling, which Opacus owns. Otherwise batches are shuffled_batches(), shared with train_batched().
    loader = DataLoader(TensorDataset(xt, yt), batch_size=batch_size)
    poisson = recipe.dp is not None and recipe.dp.poisson_sampling
    # the family's objective (classifier, VAE, GAN: objectives.py) says what the optimizer trains and the loss
    trained = objective_class(model).trained(model)
    start = [p.detach().clone() for p in trained.parameters()] if recipe.proximal_mu > 0 else None
    objective = make_objective(
        model, recipe=recipe, x=xt, y=yt, batch_size=batch_size, generator=generator, reference=reference, start=start
    )
    game = getattr(objective, "game", None)  # adversarial regularization's inference model and optimizer
    if game is not None and inference_state is not None:
        game.load_state(inference_state)
    optimizer = make_optimizer(trained.parameters(), recipe)
    model.train()  # Opacus refuses a model in eval mode, which train() itself leaves it in
    module: nn.Module = trained
    engine = None
    noise = None
    if recipe.dp is not None:
        module, optimizer, loader, engine, noise = _make_private(
            trained, optimizer, loader, recipe, generator, privacy_history or [], epsilon_horizon_epochs
        )
        if dp_optimizer_hook is not None:
            dp_optimizer_hook(optimizer)
    module.train()
    steps, epoch_loss, epochs_run, stopped = 0, float("nan"), 0, False
    best_loss, best_state, since_best = float("inf"), None, 0
    augment = Augmentation.of(recipe.augment)
    for epoch in range(recipe.epochs):
        objective.start_epoch(model, epoch)
        total, count = 0.0, 0
        if poisson:
            batches = ((xb, yb, None) for xb, yb in loader)
        else:
            batches = ((xt[i], yt[i], i) for i in shuffled_batches(len(yt), batch_size, generator))
        # one augmentation choice per slot of the epoch's permutation, drawn right after it (augment.py)
        draws = augment.draw(len(yt), generator) if augment is not None and not poisson else None
        at = 0
        for xb, yb, idx in batches:
            if augment is not None:  # Poisson batches: the sampled records' choices, drawn as the batch arrives
                now = augment.draw(len(yb), generator) if draws is None else draws.take(slice(at, at + len(yb)))
                xb, at = now.apply(xb), at + len(yb)
            objective.before_step(model, generator)
            optimizer.zero_grad(set_to_none=True)
            loss = objective.loss(module, model, xb, yb, idx, generator)
            if start is not None:
                prox = sum(((p - s) ** 2).sum() for p, s in zip(trained.parameters(), start, strict=True))
                loss = loss + 0.5 * recipe.proximal_mu * prox
            loss.backward()
            if recipe.weighted_smoothing is not None and recipe.weighted_smoothing.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.weighted_smoothing.max_grad_norm)
            optimizer.step()
            objective.after_step(module, model, generator)
            steps += 1
            total += float(loss.detach()) * len(yb)
            count += len(yb)
        epoch_loss = total / max(count, 1)
        epochs_run += 1
        check_training(epoch_loss, model.parameters(), recipe, epoch)  # a NaN model is never audited
        if validation is not None:
            assert recipe.early_stopping is not None
            val_loss = validation_loss(model, *validation)
            if val_loss < best_loss:
                best_loss, since_best = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                if since_best >= recipe.early_stopping.patience:
                    stopped = epoch < recipe.epochs - 1
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    result = TrainResult(
        model=model, loss=epoch_loss, accuracy=0.0, steps=steps, epochs_run=epochs_run, stopped_early=stopped
    )
    if engine is not None:
        assert recipe.dp is not None
        module.remove_hooks()  # type: ignore[operator]
        result.privacy_history = list(engine.accountant.history)
        if recipe.dp.poisson_sampling:
            result.epsilon = float(engine.accountant.get_epsilon(delta=recipe.dp.delta))
        # else no epsilon: the accountant composes Poisson-subsampled Gaussians, which shuffled fixed-size
        # batches are not (Chua et al. 2024); the config refuses poisson_sampling=false for that reason
        result.noise_multiplier = noise
    model.eval()
    result.accuracy, result.metrics = objective.finish(model)
    if game is not None:
        result.inference_state = game.state()
    return result


def validation_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean cross-entropy of ``model`` (eval mode) on (x, y): what early stopping minimizes."""
    return float(nn.functional.cross_entropy(predict_logits(model, x).double(), torch.as_tensor(y).cpu()))


def _make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    recipe: Recipe,
    generator: torch.Generator,
    history: list[tuple[float, float, int]],
    horizon_epochs: int | None,
):  # type: ignore[no-untyped-def]
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.data_loader import DPDataLoader

    dp = recipe.dp
    assert dp is not None
    sample_rate = 1.0 / len(loader)
    if dp.noise_multiplier is not None:
        noise = float(dp.noise_multiplier)
    else:
        assert dp.target_epsilon is not None
        noise = float(
            get_noise_multiplier(
                target_epsilon=dp.target_epsilon,
                target_delta=dp.delta,
                sample_rate=sample_rate,
                epochs=horizon_epochs or recipe.epochs,
                accountant=dp.accountant,
            )
        )
    if dp.poisson_sampling:
        # Our own DPDataLoader so that Poisson sampling draws from our seeded generator
        # (Opacus would otherwise use the global RNG outside secure mode).
        loader = DPDataLoader.from_data_loader(loader, generator=generator)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        engine = PrivacyEngine(accountant=dp.accountant)
        engine.accountant.history = [tuple(h) for h in history]
        module, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=False,
            noise_generator=generator,
        )
    return module, optimizer, loader, engine, noise


def clone_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
