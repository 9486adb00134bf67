"""Membership inference against generative models: pure functions over arrays and callables, and a registry.

Every score is "higher = member". The attacks and what each reads (``GenerativeKnowledge``):

- ``dcr`` / ``dcr-diff``: distance to the closest synthetic record, optionally calibrated by the distance to
  the closest population record (the DCR-diff baseline of the synthetic-data literature, i.e. Chen et al.
  2020's calibration with real reference records in place of a reference generator's samples).
- ``domias``: van Breugel et al. 2023, DOMIAS: log p_G(t) - log p_R(t), both densities Gaussian KDEs.
- ``logan``: Hayes et al. 2019, LOGAN white-box: the target GAN's discriminator score.
- ``elbo``: a VAE's ELBO of the target, its own training objective (the loss attack on a likelihood model).
- ``gan-leaks`` / ``gan-leaks-cal``: Chen et al. 2020, GAN-Leaks full black-box (distance to the nearest
  generated sample), calibrated by a reference generator's samples.
- ``gan-leaks-wb`` / ``gan-leaks-wb-cal``: GAN-Leaks white-box: the reconstruction error after optimising the
  latent code through the generator, calibrated by the same on a reference generator.
- ``monte-carlo``: Hilprecht et al. 2019: the fraction of generated samples within epsilon of the target.

The generator side is coded against a structural protocol (``GeneratorLike``: ``latent_dim`` and
``decode(z)``, latents drawn from N(0, I)); the models layer's generators satisfy it without importing
this module. Records are arrays (n, *shape); distances are Euclidean on the flattened records.

Ground truth never enters: the targets are the party's candidates, the population its own records (which
must not contain the candidates), the synthetic records what the generator released.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from scipy.stats import gaussian_kde
from sklearn.decomposition import PCA

from fedmia.attacks.base import MissingKnowledgeError
from fedmia.registry import ParamsError, Registry

# Rows x columns of one block of a distance matrix (float64): 2^24 entries = 128 MiB.
_BLOCK = 1 << 24

ArrayLike = np.ndarray | torch.Tensor


@runtime_checkable
class GeneratorLike(Protocol):
    """What the white-box reconstruction needs of a generator: its latent size and ``decode``.

    ``decode(z)`` maps latents (n, latent_dim) float32, drawn from N(0, I) in training, to records
    (n, *input_shape) float32, differentiably and deterministically (eval mode).
    """

    latent_dim: int

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


Discriminate = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# array helpers


def _matrix(x: ArrayLike, name: str = "records") -> torch.Tensor:
    """Records (n, *shape) as a float64 matrix (n, d) on the CPU."""
    t = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x), dtype=torch.float64)
    if t.ndim < 1 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty array (n, *shape), got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1)


def _same_width(*named: tuple[str, torch.Tensor]) -> None:
    widths = {name: m.shape[1] for name, m in named}
    if len(set(widths.values())) > 1:
        raise ValueError(f"records must have the same number of features: {widths}")


def _distance_blocks(a: torch.Tensor, b: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """Euclidean distances ||a_i - b_j|| in row blocks of at most ``_BLOCK`` entries: (rows, block).

    Computed from the differences, not as ||a||^2 + ||b||^2 - 2 a.b (cdist's fast path), which puts a copy
    of a record at ~1e-6 instead of 0 and so ranks exact copies by rounding noise; about 5x slower.
    """
    rows = max(1, _BLOCK // max(1, b.shape[0]))
    for i in range(0, a.shape[0], rows):
        sl = slice(i, min(i + rows, a.shape[0]))
        yield sl, torch.cdist(a[sl], b, compute_mode="donot_use_mm_for_euclid_dist")


def nearest_distance(targets: ArrayLike, records: ArrayLike) -> np.ndarray:
    """min_j ||t_i - r_j||_2 for every target (n,): Euclidean on flattened records, in float64 blocks."""
    a, b = _matrix(targets, "targets"), _matrix(records, "records")
    _same_width(("targets", a), ("records", b))
    out = torch.empty(a.shape[0], dtype=torch.float64)
    for sl, d in _distance_blocks(a, b):
        out[sl] = d.min(dim=1).values
    return out.numpy()


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ParamsError(message)


# ---------------------------------------------------------------------------------------------------------
# DCR


def dcr(targets: ArrayLike, synthetic: ArrayLike, population: ArrayLike | None = None) -> np.ndarray:
    """Distance to the closest synthetic record, the score negated: s(t) = -min_j ||t - s_j||_2.

    With ``population`` (the party's own real records, disjoint from the targets) the DCR-diff calibration:
    s(t) = d_pop(t) - d_syn(t), d_pop(t) = min_k ||t - p_k||_2. A record that lies close to the synthetic
    data only because it lies in a dense region is also close to real population records, so the difference
    measures closeness to the synthetic data beyond what the data distribution explains. This is Chen et
    al. 2020's calibration L(t, G) - L(t, G_ref) with real reference records in place of samples of a
    reference generator (as in van Breugel et al.'s reimplementation of GAN-Leaks-cal). We chose the
    difference over a rank/quantile of d_syn among the population's own DCRs: the rank is a monotone map
    of d_syn alone (the same ROC as plain DCR), while the difference calibrates each record by its own
    neighbourhood. Sizes matter: nearest distances shrink with the set's size, so use a population of about
    the synthetic set's size.
    """
    d_syn = nearest_distance(targets, synthetic)
    if population is None:
        return -d_syn
    return nearest_distance(targets, population) - d_syn


# ---------------------------------------------------------------------------------------------------------
# DOMIAS


def _check_domias(bandwidth: float | str, max_dim: int | None) -> None:
    ok = bandwidth in ("scott", "silverman") if isinstance(bandwidth, str) else bandwidth > 0
    _check(ok, f"bandwidth must be 'scott', 'silverman' or > 0, got {bandwidth!r}")
    _check(max_dim is None or max_dim >= 1, f"max_dim must be >= 1 or None, got {max_dim}")


def domias(
    targets: ArrayLike,
    synthetic: ArrayLike,
    reference: ArrayLike,
    bandwidth: float | str = "scott",
    max_dim: int | None = 8,
) -> np.ndarray:
    """DOMIAS (van Breugel, Sun, Qian and van der Schaar, AISTATS 2023), Eq. 2: s(t) = log p_G(t) - log p_R(t).

    p_G is a density estimate of the synthetic data, p_R of the reference data (the party's population,
    disjoint from the targets): a record the generator overfits has more synthetic density than the data
    distribution explains. Both densities are scipy ``gaussian_kde`` (the paper's KDE variant; its main
    variant fits a BNAF normalizing flow) with the same ``bandwidth`` rule ("scott", "silverman" or a
    factor; scipy's covariance is the data's times the factor squared). The score is the log ratio
    (the reference code ranks by the ratio itself; same ranking, no underflow).

    Deviation, for dimension: a KDE in 64 dimensions is meaningless with thousands of points, so when the
    records have more than ``max_dim`` features every set is projected onto the first ``max_dim`` principal
    components of the reference data (PCA fitted on the reference set only, which the party owns; the paper
    embeds its image data with a beta-VAE encoder before the flow). ``max_dim=None`` never projects.
    """
    _check_domias(bandwidth, max_dim)
    t, s, r = (
        _matrix(x, n).numpy() for x, n in ((targets, "targets"), (synthetic, "synthetic"), (reference, "reference"))
    )
    _same_width(*((n, torch.from_numpy(x)) for n, x in (("targets", t), ("synthetic", s), ("reference", r))))
    if max_dim is not None and t.shape[1] > max_dim:
        pca = PCA(n_components=max_dim, svd_solver="full").fit(r)
        t, s, r = pca.transform(t), pca.transform(s), pca.transform(r)
    try:
        p_g = gaussian_kde(s.T, bw_method=bandwidth)
        p_r = gaussian_kde(r.T, bw_method=bandwidth)
    except np.linalg.LinAlgError as exc:  # a set with no spread in some direction
        raise ValueError(f"DOMIAS: a kernel density estimate is singular ({exc}); lower max_dim") from exc
    return np.asarray(p_g.logpdf(t.T) - p_r.logpdf(t.T), dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------
# LOGAN


def _device(obj: object) -> torch.device:
    """The device of a module's (or a bound method's module's) parameters; the CPU for anything else."""
    owner = getattr(obj, "__self__", obj)
    params = getattr(owner, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _per_record(
    fn: Callable[[torch.Tensor], torch.Tensor], targets: ArrayLike, batch_size: int, name: str
) -> np.ndarray:
    """``fn`` on the targets (n, *shape) as float32, ``batch_size`` at a time without gradients: (n,) float64."""
    _check(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
    x = torch.as_tensor(np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets))
    x = x.to(torch.float32)
    device = _device(fn)
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            chunk = x[i : i + batch_size]
            values = fn(chunk.to(device)).detach().to("cpu", torch.float64)
            if values.shape != (chunk.shape[0],):
                raise ValueError(
                    f"{name} must return one value per record ({chunk.shape[0]},), got {tuple(values.shape)}"
                )
            out.append(values)
    return torch.cat(out).numpy()


def logan(discriminate: Discriminate, targets: ArrayLike, batch_size: int = 1024) -> np.ndarray:
    """LOGAN white-box (Hayes, Melis, Danezis and De Cristofaro, PoPETs 2019): s(t) = D(t).

    The target GAN's discriminator learned to call its training records real; Hayes et al. rank the
    candidates by D's output and flag the top ones as members. ``discriminate`` returns logits (n,),
    higher = real; the logit ranks as the probability sigmoid(D) does, without ties where it saturates.
    Targets keep their shape (n, *input_shape) and go through in batches without gradients.
    """
    return _per_record(discriminate, targets, batch_size, "discriminate")


def elbo_score(elbo: Callable[[torch.Tensor], torch.Tensor], targets: ArrayLike, batch_size: int = 1024) -> np.ndarray:
    """The VAE's own loss as the score (Yeom et al. 2018's loss attack on a likelihood model): s(t) = ELBO(t).

    A VAE trains by maximising the ELBO of its records, so members get a higher one. With a Gaussian
    likelihood the ELBO's reconstruction term is, up to constants, minus the mean squared distance between t
    and decodings of z ~ q(z|t), the quantity of Hilprecht et al. 2019's reconstruction attack on VAEs; the
    ELBO adds the KL term of the encoder's posterior. ``elbo`` maps (n, *input_shape) to (n,) nats.
    """
    return _per_record(elbo, targets, batch_size, "elbo")


# ---------------------------------------------------------------------------------------------------------
# GAN-Leaks


def gan_leaks_black_box(
    targets: ArrayLike, synthetic: ArrayLike, reference_synthetic: ArrayLike | None = None
) -> np.ndarray:
    """GAN-Leaks full black-box (Chen, Yu, Zhang and Fritz, CCS 2020): s(t) = -min_i ||t - G(z_i)||_2.

    The generator is seen only through its samples G(z_1..n) (``synthetic``); the reconstruction is the
    nearest sample, the distance Euclidean as the reference code's nearest-neighbour search (``fbb.py``).
    Uncalibrated it ranks as ``dcr``. Calibrated (``reference_synthetic``: samples of a reference generator
    the party trained on its own data, as many as ``synthetic``): s(t) = -(L(t, G) - L(t, G_ref)), the
    paper's Eq. for the calibrated attack and its ``eval_roc.py``.
    """
    loss = nearest_distance(targets, synthetic)
    if reference_synthetic is not None:
        loss = loss - nearest_distance(targets, reference_synthetic)
    return -loss


Regularizer = Literal["norm", "ridge"]
Optimizer = Literal["lbfgs", "adam"]


def _penalty(z: torch.Tensor, regularizer: str) -> torch.Tensor:
    sq = (z * z).sum(dim=1)
    return (sq - z.shape[1]) ** 2 if regularizer == "norm" else sq


def _check_reconstruct(
    lam: float, regularizer: str, optimizer: str, steps: int, lr: float, n_starts: int, batch_size: int
) -> None:
    _check(lam >= 0, f"lam must be >= 0, got {lam}")
    _check(regularizer in ("norm", "ridge"), f"regularizer must be 'norm' or 'ridge', got {regularizer!r}")
    _check(optimizer in ("lbfgs", "adam"), f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    _check(steps >= 1, f"steps must be >= 1, got {steps}")
    _check(lr > 0, f"lr must be > 0, got {lr}")
    _check(n_starts >= 1, f"n_starts must be >= 1, got {n_starts}")
    _check(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")


@dataclass(frozen=True)
class _Objective:
    """Per row of z: the reconstruction error (1/d) ||x - G(z)||^2 and the full objective error + lam R(z)."""

    generator: GeneratorLike
    x: torch.Tensor
    lam: float
    regularizer: str

    def terms(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon = self.generator.decode(z).reshape(z.shape[0], -1)
        if recon.shape != self.x.shape:
            raise ValueError(f"decode gave {recon.shape[1]} features per record, the targets have {self.x.shape[1]}")
        err = ((recon - self.x) ** 2).mean(dim=1)
        return err, err + self.lam * _penalty(z, self.regularizer)


def _minimize(objective: _Objective, z: torch.Tensor, optimizer: str, steps: int, lr: float) -> None:
    """Minimise the summed (separable) objective over the leaf ``z`` in place."""

    def closure() -> float:
        loss = objective.terms(z)[1].sum()
        (z.grad,) = torch.autograd.grad(loss, [z])  # never into the generator's own .grad
        return float(loss.detach())

    if optimizer == "lbfgs":
        lbfgs = torch.optim.LBFGS(
            [z], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12
        )
        lbfgs.step(closure)
    else:
        adam = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            closure()
            adam.step()


def reconstruct(
    generator: GeneratorLike,
    targets: ArrayLike,
    *,
    lam: float = 0.001,
    regularizer: Regularizer = "norm",
    optimizer: Optimizer = "lbfgs",
    steps: int = 200,
    lr: float = 0.05,
    n_starts: int = 4,
    nn_pool: int = 0,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """GAN-Leaks white-box reconstruction: z* = argmin_z (1/d) ||t - G(z)||^2 + lam R(z), per target.

    Returns (the reconstruction error (1/d) ||t - G(z*)||^2 (n,), z* (n, latent_dim)). As in the reference
    code (``wb_*.py``): the squared error is the mean over the d features, the regularizer keeps z on the
    shell of its N(0, I) prior, R(z) = (||z||^2 - latent_dim)^2 with lam = 0.001 (``regularizer="norm"``;
    ``"ridge"``: R(z) = ||z||^2, a Gaussian prior's log-density), L-BFGS (torch's, strong-Wolfe line search,
    ``steps`` iterations at most; the code runs scipy's L-BFGS-B for 1000 function calls) or Adam
    (``lr``), and the attack's loss is the reconstruction term alone, without the regularizer.
    Deviations: no LPIPS term (it needs a pretrained VGG; the code's ``l2`` distance option); several
    starts where the code starts once from z = 0: start 0 is z = 0, starts 1.. are N(0, I) draws from
    ``seed``, the same for every target, and each target keeps the start with the lowest objective.
    ``nn_pool`` > 0 adds the code's nearest-neighbour initialisation (its ``-init nn``, from the full
    black-box attack's result): ``nn_pool`` latents drawn from ``seed`` after the random starts are decoded,
    and each target also starts from the latent whose decoding lies nearest to it (Euclidean).
    Targets go ``batch_size`` at a time, each with all its starts. Adam's update is per coordinate, so a
    target's result does not depend on the others in its batch; L-BFGS shares one line search across the
    batch's summed (separable) objective, as the reference code does with its batch mean.
    """
    _check_reconstruct(lam, regularizer, optimizer, steps, lr, n_starts, batch_size)
    _check(nn_pool >= 0, f"nn_pool must be >= 0, got {nn_pool}")
    k = int(generator.latent_dim)
    device = _device(generator)
    x_all = _matrix(targets, "targets").to(torch.float32)
    rng = torch.Generator().manual_seed(seed)
    shared = torch.zeros(n_starts, k)
    if n_starts > 1:
        shared[1:] = torch.randn(n_starts - 1, k, generator=rng)
    starts = shared.expand(x_all.shape[0], n_starts, k)  # (n, S, k)
    if nn_pool > 0:
        pool = torch.randn(nn_pool, k, generator=rng)
        with torch.no_grad():
            decoded = torch.cat([generator.decode(c.to(device)).reshape(len(c), -1).cpu() for c in pool.split(1024)])
        _same_width(("targets", x_all), ("decoded", decoded))
        nearest = torch.empty(x_all.shape[0], dtype=torch.long)
        for sl, d in _distance_blocks(x_all.double(), decoded.double()):
            nearest[sl] = d.argmin(dim=1)
        starts = torch.cat([starts, pool[nearest][:, None, :]], dim=1)
    n_s = starts.shape[1]
    errors, latents = [], []
    for i in range(0, x_all.shape[0], batch_size):
        x = x_all[i : i + batch_size].to(device).repeat_interleave(n_s, dim=0)  # (b * S, d)
        z = starts[i : i + batch_size].reshape(-1, k).clone().to(device).requires_grad_(True)
        objective = _Objective(generator, x, lam, regularizer)
        _minimize(objective, z, optimizer, steps, lr)
        with torch.no_grad():
            err, total = objective.terms(z)
            b = x.shape[0] // n_s
            best = total.reshape(b, n_s).argmin(dim=1)
            rows = torch.arange(b, device=best.device) * n_s + best
            errors.append(err[rows].to("cpu", torch.float64))
            latents.append(z[rows].detach().to("cpu", torch.float64))
    return torch.cat(errors).numpy(), torch.cat(latents).numpy()


def gan_leaks_white_box(
    generator: GeneratorLike,
    targets: ArrayLike,
    reference_generator: GeneratorLike | None = None,
    **options: object,
) -> np.ndarray:
    """GAN-Leaks white-box (Chen et al. 2020): s(t) = -L(t, G), L the reconstruction error of ``reconstruct``.

    Calibrated (``reference_generator``: one the party trained on its own data the way the target was):
    s(t) = -(L(t, G) - L(t, G_ref)), the same optimisation (same options and starts) on both.
    """
    loss = reconstruct(generator, targets, **options)[0]  # type: ignore[arg-type]
    if reference_generator is not None:
        loss = loss - reconstruct(reference_generator, targets, **options)[0]  # type: ignore[arg-type]
    return -loss


# ---------------------------------------------------------------------------------------------------------
# Monte Carlo


def mc_epsilon(distances_min: np.ndarray) -> float:
    """Hilprecht et al.'s median heuristic: epsilon = median over the targets of min_j d(t, s_j)."""
    return float(np.median(distances_min))


def _check_monte_carlo(epsilon: float | None, heuristic: str, percentile: float, weighting: str) -> None:
    _check(epsilon is None or epsilon > 0, f"epsilon must be > 0 or None, got {epsilon}")
    _check(heuristic in ("median", "percentile"), f"heuristic must be 'median' or 'percentile', got {heuristic!r}")
    _check(0 < percentile <= 100, f"percentile must be in (0, 100], got {percentile}")
    _check(weighting in ("count", "log"), f"weighting must be 'count' or 'log', got {weighting!r}")


def monte_carlo(
    targets: ArrayLike,
    synthetic: ArrayLike,
    epsilon: float | None = None,
    heuristic: Literal["median", "percentile"] = "median",
    percentile: float = 1.0,
    weighting: Literal["count", "log"] = "count",
) -> np.ndarray:
    """Monte-Carlo attack (Hilprecht, Härterich and Bernau, PoPETs 2019): s(t) = (1/n) sum_j 1[d(t, s_j) <= eps].

    The fraction of the n generated samples in the epsilon-ball around the target estimates the
    generator's probability mass there, which overfitting concentrates at training records. d is Euclidean
    (the paper also uses PCA- and HOG-based distances on images). ``epsilon`` explicit, or by a heuristic
    over the targets being attacked: "median" (the paper's median heuristic, as van Breugel et al.'s
    reimplementation: eps = median over targets of the distance to their nearest sample) or "percentile"
    (eps = the ``percentile``-th percentile of all target-sample distances; the default 1 is our choice, not
    a value from the paper).

    ``weighting="log"``: the distance-weighted variant, s(t) = (1/n) sum_j 1[d <= eps] (-log(d / eps)), each
    neighbour weighted by how far inside the ball it lies. Deviation: reimplementations weight by -log(d),
    which turns negative (more neighbours, lower score) once distances exceed 1; dividing by eps keeps every
    weight >= 0 and the score scale-free. d / eps is floored at 1e-12 so that a sample equal to the target
    counts finitely.
    """
    _check_monte_carlo(epsilon, heuristic, percentile, weighting)
    a, b = _matrix(targets, "targets"), _matrix(synthetic, "synthetic")
    _same_width(("targets", a), ("synthetic", b))
    if epsilon is None:
        if heuristic == "median":
            epsilon = mc_epsilon(nearest_distance(a, b))
        else:
            all_d = np.concatenate([d.numpy().ravel() for _, d in _distance_blocks(a, b)])
            epsilon = float(np.percentile(all_d, percentile))
        if epsilon <= 0:  # half the targets coincide with a sample: the ball must still hold them
            epsilon = float(np.finfo(np.float64).tiny)
    out = torch.empty(a.shape[0], dtype=torch.float64)
    for sl, d in _distance_blocks(a, b):
        inside = d <= epsilon
        if weighting == "count":
            out[sl] = inside.sum(dim=1).to(torch.float64)
        else:
            w = -torch.log(torch.clamp(d / epsilon, min=1e-12))
            out[sl] = torch.where(inside, w, torch.zeros_like(w)).sum(dim=1)
    return (out / b.shape[0]).numpy()


# ---------------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class GenerativeKnowledge:
    """What a party attacking a generator holds; an attack's ``needs`` names the fields it reads."""

    synthetic: np.ndarray | None = None  # (n_s, *shape): records the target generator released
    population: np.ndarray | None = None  # (m, *shape): the party's own real records, disjoint from the targets
    generator: GeneratorLike | None = None  # the target generator's weights (white-box: decode, latent_dim)
    discriminator: Discriminate | None = None  # the target GAN's discriminator: logits (n,), higher = real
    reference_synthetic: np.ndarray | None = None  # samples of a reference generator the party trained
    reference_generator: GeneratorLike | None = None  # that reference generator's weights

    def available(self) -> frozenset[str]:
        return frozenset(f.name for f in fields(self) if getattr(self, f.name) is not None)


KNOWLEDGE_FIELDS = frozenset(f.name for f in fields(GenerativeKnowledge))


class GenerativeAttack(ABC):
    """Scores target records (n, *shape) against a generator; higher = more likely a training record."""

    needs: ClassVar[frozenset[str]] = frozenset()

    def check(self, knowledge: GenerativeKnowledge) -> None:
        missing = self.needs - knowledge.available()
        if missing:
            raise MissingKnowledgeError(f"{type(self).__name__} needs {sorted(missing)}, which the party lacks")

    @abstractmethod
    def score(self, targets: np.ndarray, knowledge: GenerativeKnowledge) -> np.ndarray:
        """Membership scores (n,) of ``targets``."""


GENERATIVE_ATTACKS: Registry[GenerativeAttack] = Registry("generative attack")
"""Attacks on generators: typed parameters from each class's ``__init__``; ``needs`` says what each reads."""


@GENERATIVE_ATTACKS.register("dcr")
class DCR(GenerativeAttack):
    """Distance to the closest synthetic record: score = -min_j ||t - s_j||. Needs: synthetic."""

    needs = frozenset({"synthetic"})

    def score(self, targets: np.ndarray, knowledge: GenerativeKnowledge) -> np.ndarray:
        self.check(knowledge)
        return dcr(targets, knowledge.synthetic)  # type: ignore[arg-type]


@GENERATIVE_ATTACKS.register("dcr-diff")
class DCRDiff(GenerativeAttack):
    """DCR calibrated by the population: score = d_pop(t) - d_syn(t). Needs: synthetic, population."""

    needs = frozenset({"synthetic", "population"})

    def score(self, targets: np.ndarray, knowledge: GenerativeKnowledge) -> np.ndarray:
        self.check(knowledge)
        return dcr(targets, knowledge.synthetic, knowledge.population)  # type: ignore[arg-type]


@GENERATIVE_ATTACKS.register("domias")
class DOMIAS(GenerativeAttack):
    """DOMIAS (van Breugel et al. 2023): log p_synthetic(t) - log p_population(t), Gaussian KDEs (PCA of the
    population above max_dim features). Needs: synthetic, population."""

    needs = frozenset({"synthetic", "population"})

    def __init__(self, bandwidth: float | Literal["scott", "silverman"] = "scott", max_dim: int | None = 8) -> None:
        _check_domias(bandwidth, max_dim)
        self.bandwidth, self.max_dim = bandwidth, max_dim

    def score(self, targets: np.ndarray, knowledge: GenerativeKnowledge) -> np.ndarray:
        self.check(knowledge)
        return domias(targets, knowledge.synthetic, knowledge.population, self.bandwidth, self.max_dim)  # type: ignore[arg-type]


@GENERATIVE_ATTACKS.register("logan")
class LOGAN(GenerativeAttack):
    """LOGAN white-box (Hayes et al. 2019): the target GAN's discriminator logit. Needs: discriminator."""

    needs = frozenset({"discriminator"})

    def __init__(self, batch_size: int = 1024) -> None:
        _check(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def score(self, targets: np.ndarray, knowledge: GenerativeKnowledge) -> np.ndarray:
        self.check(knowledge)
        return logan(knowledge.discriminator, targets, self.batch_size)  # type: ignore[arg-type]


@GENERATIVE_ATTACKS.register("elbo")
class ELBO(GenerativeAttack):
    """The VAE's ELBO of the target (its training objective; a loss attack). Needs: generator (with elbo)."""

    needs = frozenset({"generator"})

    def __init__(self, batch_size: int = 1024) -> None:
        _check(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def score(self, targets: np.ndarray, knowledge: GenerativeKnowledge) -> np.ndarray:
        self.check(knowledge)
        elbo = getattr(knowledge.generator, "elbo", None)
        if elbo is None:
            raise MissingKnowledgeError(
                f"ELBO needs a generator with an elbo(x) (a VAE), not {type(knowledge.generator).__name__}"
            )
        return elbo_score(elbo, targets, self.batch_size)


@GENERATIVE_ATTACKS.register("gan-leaks")
class GANLeaks(GenerativeAttack):
    """GAN-Leaks full black-box (Chen et al. 2020): minus the distance to the nearest generated sample.
    Needs: synthetic."""

    needs = frozenset({"synthetic"})

    def score(self, targets: np.ndarray, knowledge: GenerativeKnowledge) -> np.ndarray:
        self.check(knowledge)
        return gan_leaks_black_box(targets, knowledge.synthetic)  # type: ignore[arg-type]


@GENERATIVE_ATTACKS.register("gan-leaks-cal")
class GANLeaksCalibrated(GenerativeAttack):
    """GAN-Leaks full black-box calibrated: -(d(t, synthetic) - d(t, reference generator's samples)).
    Needs: synthetic, reference_synthetic."""

    needs = frozenset({"synthetic", "reference_synthetic"})

    def score(self, targets: np.ndarray, knowledge: GenerativeKnowledge) -> np.ndarray:
        self.check(knowledge)
        return gan_leaks_black_box(targets, knowledge.synthetic, knowledge.reference_synthetic)  # type: ignore[arg-type]


@GENERATIVE_ATTACKS.register("gan-leaks-wb", seed_param="seed")
class GANLeaksWhiteBox(GenerativeAttack):
    """GAN-Leaks white-box (Chen et al. 2020): minus the error of the best latent reconstruction G(z*).
    Needs: generator."""

    needs = frozenset({"generator"})

    def __init__(
        self,
        lam: float = 0.001,
        regularizer: Literal["norm", "ridge"] = "norm",
        optimizer: Literal["lbfgs", "adam"] = "lbfgs",
        steps: int = 200,
        lr: float = 0.05,
        n_starts: int = 4,
        nn_pool: int = 0,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        _check_reconstruct(lam, regularizer, optimizer, steps, lr, n_starts, batch_size)
        _check(nn_pool >= 0, f"nn_pool must be >= 0, got {nn_pool}")
        self.options: dict[str, object] = dict(
            lam=lam,
            regularizer=regularizer,
            optimizer=optimizer,
            steps=steps,
            lr=lr,
            n_starts=n_starts,
            nn_pool=nn_pool,
            seed=seed,
            batch_size=batch_size,
        )

    def _reference(self, knowledge: GenerativeKnowledge) -> GeneratorLike | None:
        return None

    def score(self, targets: np.ndarray, knowledge: GenerativeKnowledge) -> np.ndarray:
        self.check(knowledge)
        return gan_leaks_white_box(knowledge.generator, targets, self._reference(knowledge), **self.options)  # type: ignore[arg-type]


@GENERATIVE_ATTACKS.register("gan-leaks-wb-cal", seed_param="seed")
class GANLeaksWhiteBoxCalibrated(GANLeaksWhiteBox):
    """GAN-Leaks white-box calibrated: -(L(t, G) - L(t, G_ref)), the same reconstruction on a reference
    generator. Needs: generator, reference_generator."""

    needs = frozenset({"generator", "reference_generator"})

    def _reference(self, knowledge: GenerativeKnowledge) -> GeneratorLike | None:
        return knowledge.reference_generator


@GENERATIVE_ATTACKS.register("monte-carlo")
class MonteCarlo(GenerativeAttack):
    """Monte-Carlo attack (Hilprecht et al. 2019): fraction of generated samples within epsilon of the target.
    Needs: synthetic."""

    needs = frozenset({"synthetic"})

    def __init__(
        self,
        epsilon: float | None = None,
        heuristic: Literal["median", "percentile"] = "median",
        percentile: float = 1.0,
        weighting: Literal["count", "log"] = "count",
    ) -> None:
        _check_monte_carlo(epsilon, heuristic, percentile, weighting)
        self.epsilon, self.heuristic, self.percentile, self.weighting = epsilon, heuristic, percentile, weighting

    def score(self, targets: np.ndarray, knowledge: GenerativeKnowledge) -> np.ndarray:
        self.check(knowledge)
        return monte_carlo(
            targets,
            knowledge.synthetic,  # type: ignore[arg-type]
            epsilon=self.epsilon,
            heuristic=self.heuristic,
            percentile=self.percentile,
            weighting=self.weighting,
        )


__all__ = [
    "GENERATIVE_ATTACKS",
    "KNOWLEDGE_FIELDS",
    "GenerativeAttack",
    "GenerativeKnowledge",
    "GeneratorLike",
    "dcr",
    "domias",
    "elbo_score",
    "gan_leaks_black_box",
    "gan_leaks_white_box",
    "logan",
    "mc_epsilon",
    "monte_carlo",
    "nearest_distance",
    "reconstruct",
]
