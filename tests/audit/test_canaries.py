"""Oracle tests for the white-box gradient canaries (fedmia.audit.canaries): the auditor's inversion of SGD from
the iterates, the hook's insertion of exactly the included canaries before the noise, the observations in units
of the claimed noise, the broken implementations of the negative controls, and the statistics."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from scipy import stats

from fedmia.audit.canaries import (
    CanaryInsertion,
    DiracCanaries,
    Observations,
    PublicHyperparameters,
    all_iterates_scores,
    dirac_canaries,
    observe,
)
from fedmia.training import DPSpec, ModelSpec, Recipe, train

SIGMA, CLIP = 1.0, 1.0


def test_observe_undoes_sgd_with_momentum_weight_decay_and_the_batch_normalisation() -> None:
    # torch's SGD on a 3-vector, gradient g_t / B set by hand: the auditor recovers g_t / (sigma C) from the iterates
    g = np.random.default_rng(0)
    sums = g.normal(size=(6, 3)) * 4.0  # the noisy gradient sums g_t
    pub = PublicHyperparameters(2.0, 0.5, 16.0, 1.0, lr=0.3, momentum=0.9, weight_decay=0.01)
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=pub.lr, momentum=pub.momentum, weight_decay=pub.weight_decay)
    traj = [w.detach().numpy().copy()]
    for s in sums:
        w.grad = torch.as_tensor(s / pub.expected_batch_size)
        opt.step()
        traj.append(w.detach().numpy().copy())
    obs = observe(np.stack(traj), pub, norm=0.5)
    np.testing.assert_allclose(obs.z, sums / (2.0 * 0.5), rtol=1e-9, atol=1e-9)
    assert obs.shift == pytest.approx(0.5)
    np.testing.assert_allclose(obs.last, -(traj[-1] - traj[0]) * 16.0 / (0.3 * 1.0))


def _zero_feature_world(n: int = 50, d: int = 40, live: int = 10) -> tuple[np.ndarray, np.ndarray, ModelSpec]:
    # features live.. are zero in every record, so the logistic regression's weights on them get no clean gradient
    g = np.random.default_rng(1)
    x = np.zeros((n, d), dtype=np.float32)
    x[:, :live] = g.normal(size=(n, live))
    y = g.integers(0, 3, n)
    return x, y, ModelSpec("logreg", (d,), 3)


def _quiet_coordinates(d: int = 40, live: int = 10) -> np.ndarray:
    return np.array([c * d + j for c in range(3) for j in range(live, d)])  # weight (3, d), row-major


def _run(
    mode: str, *, batch: int, epochs: int, sigma: float = SIGMA, clip: float = CLIP, seed: int = 0
) -> tuple[CanaryInsertion, DiracCanaries, float | None]:
    x, y, spec = _zero_feature_world()
    coords = _quiet_coordinates()
    inc = np.random.default_rng(seed).random(len(coords)) < 0.5
    can = DiracCanaries(coords, inc, norm=clip)
    rec = Recipe(
        epochs=epochs, batch_size=batch, lr=0.1, momentum=0.5, dp=DPSpec(noise_multiplier=sigma, max_grad_norm=clip)
    )
    n = len(y)
    hook = CanaryInsertion(can, sample_rate=1.0 / math.ceil(n / batch), generator=torch.Generator().manual_seed(seed),
                           mode=mode)  # type: ignore[arg-type]  # fmt: skip
    res = train(spec.build(seed), x, y, rec, generator=torch.Generator().manual_seed(seed), dp_optimizer_hook=hook)
    return hook, can, res.epsilon


def test_no_noise_run_shows_exactly_the_included_canaries_every_step() -> None:
    hook, can, _ = _run("no_noise", batch=50, epochs=8)
    assert hook.public is not None
    obs = observe(hook.trajectory(), hook.public, can.norm)
    assert obs.z.shape == (8, len(can.coordinates))
    # no clean gradient on these coordinates, no noise: z_{i,t} = a S_i exactly (a = norm / (sigma C) = 1)
    np.testing.assert_allclose(obs.z, np.broadcast_to(can.included * 1.0, obs.z.shape), atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subsampled_canaries_join_a_batch_at_the_sample_rate(seed: int) -> None:
    hook, can, _ = _run("no_noise", batch=25, epochs=20, seed=seed)  # q = 1 / 2, 40 steps
    assert hook.public is not None and hook.public.sample_rate == 0.5
    z = observe(hook.trajectory(), hook.public, can.norm).z
    assert np.all(np.isclose(z, 0.0, atol=1e-4) | np.isclose(z, 1.0, atol=1e-4))
    assert np.all(np.isclose(z[:, ~can.included], 0.0, atol=1e-4))
    share = float(np.isclose(z[:, can.included], 1.0, atol=1e-4).mean())
    assert share == pytest.approx(0.5, abs=0.06)  # 40 steps x ~42 IN canaries; measured 0.500, 0.511, 0.517


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_honest_observations_are_standard_normal_in_units_of_the_claimed_noise(seed: int) -> None:
    # OUT canaries' z ~ N(0, 1), IN ~ N(1, 1): 20 steps x ~45 canaries each. Measured on seeds 0-2: OUT mean -0.008,
    # -0.023, -0.036, std 0.994, 1.019, 0.999; IN mean 1.025, 1.034, 1.041, std 1.036, 0.897, 1.001 (seeds 3-10:
    # IN std 0.96-1.05). A wrong normalisation (B, lr, sigma C, momentum) moves them by factors, not by 0.1.
    hook, can, _ = _run("honest", batch=50, epochs=20, seed=seed)
    assert hook.public is not None
    z = observe(hook.trajectory(), hook.public, can.norm).z
    out, inn = z[:, ~can.included], z[:, can.included]
    assert abs(out.mean()) < 0.12 and out.std() == pytest.approx(1.0, abs=0.15)
    assert inn.mean() == pytest.approx(1.0, abs=0.12) and inn.std() == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_with_the_known_clean_sums_any_coordinate_is_standard_normal(seed: int) -> None:
    # q = 1: the hook records each step's clean clipped sum; subtracted, canaries on random coordinates (every
    # feature live) are N(0, 1) OUT and N(1, 1) IN. Measured on seeds 0-2: OUT mean/std 0.014/0.976, 0.004/0.944,
    # -0.007/0.988; IN 0.980/1.004, 0.992/1.019, 1.049/1.019; without the clean sums OUT std 1.22, 1.17, 1.29
    x, y, spec = _zero_feature_world(live=40)  # every feature live
    can = dirac_canaries(123, 100, norm=CLIP, seed=seed)
    rec = Recipe(epochs=20, batch_size=50, lr=0.1, momentum=0.5, dp=DPSpec(noise_multiplier=SIGMA, max_grad_norm=CLIP))
    hook = CanaryInsertion(can, sample_rate=1.0, generator=torch.Generator().manual_seed(seed))
    train(spec.build(seed), x, y, rec, generator=torch.Generator().manual_seed(seed), dp_optimizer_hook=hook)
    assert hook.public is not None and hook.clean_sums() is not None
    z = observe(hook.trajectory(), hook.public, can.norm, hook.clean_sums()).z
    out, inn = z[:, ~can.included], z[:, can.included]
    assert abs(out.mean()) < 0.12 and out.std() == pytest.approx(1.0, abs=0.15)
    assert inn.mean() == pytest.approx(1.0, abs=0.12) and inn.std() == pytest.approx(1.0, abs=0.15)
    raw = observe(hook.trajectory(), hook.public, can.norm).z  # without: the live coordinates' clean sums show
    assert raw[:, ~can.included].std() > 1.1


def test_the_broken_run_reports_the_claimed_epsilon() -> None:
    # the negative control keeps the claim: the accountant sees sigma = 1, q = 1, 8 steps in both runs
    _, _, honest = _run("honest", batch=50, epochs=8)
    _, _, broken = _run("no_noise", batch=50, epochs=8)
    acc = RDPAccountant()
    acc.history = [(SIGMA, 1.0, 8)]
    assert honest == pytest.approx(acc.get_epsilon(1e-5)) and broken == honest


@pytest.mark.parametrize("mode", ["honest", "no_clipping"])
def test_first_step_sum_is_the_clipped_or_raw_per_sample_gradient_sum(mode: str) -> None:
    # every parameter of a 4 -> 3 logistic regression is a canary; noise 1e-6 C: the first step's observed sum minus
    # the canaries is the sum of per-sample gradients at theta_0, clipped to C = 0.05 (honest) or raw (no_clipping)
    g = np.random.default_rng(2)
    x = g.normal(size=(8, 4)).astype(np.float32)
    y = g.integers(0, 3, 8)
    spec = ModelSpec("logreg", (4,), 3)
    model = spec.build(0)
    start = copy.deepcopy(model)
    can = dirac_canaries(15, 15, norm=0.05, seed=3)
    clip, sigma = 0.05, 1e-6
    rec = Recipe(epochs=1, batch_size=8, lr=0.1, momentum=0.0, dp=DPSpec(noise_multiplier=sigma, max_grad_norm=clip))
    hook = CanaryInsertion(can, sample_rate=1.0, generator=torch.Generator().manual_seed(0), mode=mode)  # type: ignore[arg-type]
    train(model, x, y, rec, generator=torch.Generator().manual_seed(0), dp_optimizer_hook=hook)
    assert hook.public is not None
    obs = observe(hook.trajectory(), hook.public, can.norm)
    seen = obs.z[0] * sigma * clip - can.norm * can.included
    per_sample = []
    for xi, yi in zip(x, y, strict=True):
        start.zero_grad()
        loss = torch.nn.functional.cross_entropy(start(torch.as_tensor(xi[None])), torch.as_tensor([yi]))
        loss.backward()
        flat = torch.cat([p.grad.reshape(-1) for p in start.parameters()]).double().numpy()
        per_sample.append(flat * min(1.0, clip / np.linalg.norm(flat)) if mode == "honest" else flat)
    expect = np.sum(per_sample, axis=0)[can.coordinates]
    np.testing.assert_allclose(seen, expect, rtol=1e-3, atol=1e-5)


def test_all_iterates_statistic_is_the_log_likelihood_ratio() -> None:
    # the per-step densities themselves: IN is the mixture (1 - q) N(0, 1) + q N(a, 1), OUT is N(0, 1); the
    # statistic is the sum over steps of log(IN density / OUT density)
    z = np.array([[0.5, -1.0], [2.0, 0.0], [-3.0, 4.0]])
    for a, q in ((0.8, 0.3), (0.25, 0.05), (1.5, 1.0)):
        got = all_iterates_scores(Observations(z, np.zeros(2), a, q))
        expect = np.log(((1 - q) * stats.norm.pdf(z) + q * stats.norm.pdf(z - a)) / stats.norm.pdf(z)).sum(axis=0)
        np.testing.assert_allclose(got, expect, rtol=1e-12)


def test_dirac_canaries_are_distinct_seeded_and_checked() -> None:
    a, b = dirac_canaries(100, 40, norm=1.0, seed=5), dirac_canaries(100, 40, norm=1.0, seed=5)
    assert np.array_equal(a.coordinates, b.coordinates) and np.array_equal(a.included, b.included)
    assert len(set(a.coordinates.tolist())) == 40
    with pytest.raises(ValueError, match="canaries <= 100"):
        dirac_canaries(100, 101, norm=1.0, seed=5)
    with pytest.raises(ValueError, match="distinct"):
        DiracCanaries(np.array([1, 1]), np.array([True, False]), 1.0)
