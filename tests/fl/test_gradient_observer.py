"""GradientObserver against plain torch.autograd on a hand-built round (no Ray).

Two clients each take one SGD step from the same global model on their own records, so a client's
descent step is lr x the sum of its records' gradients: a record's gradient must align with its own
client's step more than with the other's. Cosine and difference are recomputed here, one record at a
time with autograd, and compared number for number.
"""

from __future__ import annotations

import decimal

import numpy as np
import pytest
import torch

from fedmia.fl.observe import GradientObserver
from fedmia.fl.views import ClientUpdate, RoundView
from fedmia.training import ModelSpec

N_PER_CLIENT = 12
LR = 0.5
NUM_CLIENTS = 3  # client 1 is not sampled: its row must stay NaN
SAMPLED = (0, 2)


def record_grad(model: torch.nn.Module, x: np.ndarray, y: int) -> torch.Tensor:
    """Flattened gradient of one record's cross-entropy, in named_parameters order (float64)."""
    model.zero_grad()
    out = model(torch.as_tensor(x[None]))
    torch.nn.functional.cross_entropy(out, torch.tensor([y])).backward()
    return torch.cat([p.grad.reshape(-1).double() for _, p in model.named_parameters()])


def flat(state: dict[str, torch.Tensor], model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([state[k].reshape(-1).double() for k, _ in model.named_parameters()])


@pytest.fixture(scope="module")
def round_one() -> dict:
    rng = np.random.default_rng(0)
    n = N_PER_CLIENT * len(SAMPLED) + 5  # the last 5 records trained nobody
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = rng.integers(0, 3, n)
    owner = np.array([SAMPLED[i // N_PER_CLIENT] if i < N_PER_CLIENT * len(SAMPLED) else -1 for i in range(n)])
    spec = ModelSpec("mlp", (6,), 3, {"hidden": [8]})
    model = spec.build(0)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = torch.stack([record_grad(model, x[i], int(y[i])) for i in range(n)])  # (n, P) float64

    updates = []
    for pid in SAMPLED:
        step = LR * grads[owner == pid].sum(0)  # one SGD step on the sum of its records' losses
        state, offset = {}, 0
        for k, p in model.named_parameters():
            state[k] = (before[k].double() - step[offset : offset + p.numel()].reshape(p.shape)).float()
            offset += p.numel()
        updates.append(ClientUpdate(partition_id=pid, state=state, num_examples=N_PER_CLIENT, metrics={}))
    view = RoundView(server_round=1, global_before=before, global_after=None, sampled=SAMPLED, updates=tuple(updates))
    observer = GradientObserver(spec, (x, y), NUM_CLIENTS, chunk=7)  # chunks that do not divide n
    observer.on_round(view)
    steps = {u.partition_id: flat(before, model) - flat(dict(u.state), model) for u in updates}
    return {
        "grads": grads,
        "steps": steps,
        "owner": owner,
        "observer": observer,
        "records": (x, y),
        "spec": spec,
        "view": view,
    }


def test_one_row_per_round_and_unsampled_client_is_nan(round_one: dict) -> None:
    obs = round_one["observer"]
    n = len(round_one["owner"])
    assert len(obs.cosine) == len(obs.difference) == 1
    assert obs.cosine[0].shape == obs.difference[0].shape == (NUM_CLIENTS, n)
    assert np.isnan(obs.cosine[0][1]).all() and np.isnan(obs.difference[0][1]).all()
    assert np.isfinite(obs.cosine[0][list(SAMPLED)]).all()


def test_cosine_matches_autograd(round_one: dict) -> None:
    grads, steps, obs = round_one["grads"], round_one["steps"], round_one["observer"]
    for pid, s in steps.items():
        expected = torch.nn.functional.cosine_similarity(grads, s[None], dim=1).numpy()
        np.testing.assert_allclose(obs.cosine[0][pid], expected, atol=2e-5)


def test_difference_matches_autograd(round_one: dict) -> None:
    grads, steps, obs = round_one["grads"], round_one["steps"], round_one["observer"]
    for pid, s in steps.items():
        expected = (s.norm() - (s[None] - grads).norm(dim=1)).numpy()
        scale = float(s.norm())
        np.testing.assert_allclose(obs.difference[0][pid], expected, atol=1e-4 * scale, rtol=1e-4)


def test_records_align_with_their_own_clients_step(round_one: dict) -> None:
    obs, owner = round_one["observer"], round_one["owner"]
    a, b = SAMPLED
    cos = obs.cosine[0]
    own_a, own_b = owner == a, owner == b
    assert cos[a, own_a].mean() > cos[b, own_a].mean() + 0.05
    assert cos[b, own_b].mean() > cos[a, own_b].mean() + 0.05
    diff = obs.difference[0]
    assert diff[a, own_a].mean() > diff[b, own_a].mean() + 0.05
    assert diff[b, own_b].mean() > diff[a, own_b].mean() + 0.05


def test_norm_matches_autograd(round_one: dict) -> None:
    """One row per round, (n,): the record's gradient norm at the global model, the same for every client."""
    grads, obs = round_one["grads"], round_one["observer"]
    assert len(obs.norm) == 1 and obs.norm[0].shape == (len(round_one["owner"]),)
    np.testing.assert_allclose(obs.norm[0], grads.norm(dim=1).numpy(), rtol=1e-5)


def test_difference_matches_autograd_closely(round_one: dict) -> None:
    """Tighter than test_difference_matches_autograd: float64 arithmetic leaves only the float32 gradients'
    rounding (vmap vs backward), far below 1e-5 of the gradient's size."""
    grads, steps, obs = round_one["grads"], round_one["steps"], round_one["observer"]
    for pid, s in steps.items():
        expected = (s.norm() - (s[None] - grads).norm(dim=1)).numpy()
        np.testing.assert_allclose(
            obs.difference[0][pid], expected, rtol=1e-5, atol=1e-6 * float(grads.norm(dim=1).max())
        )


def exact_difference(s: np.ndarray, g: np.ndarray) -> float:
    """||s|| - ||s - g|| in 60-digit decimal arithmetic on the exact values of the float64 inputs."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        ds, dg = [decimal.Decimal(float(v)) for v in s], [decimal.Decimal(float(v)) for v in g]
        norm_s = sum(v * v for v in ds).sqrt()
        norm_rest = sum((a - b) * (a - b) for a, b in zip(ds, dg, strict=True)).sqrt()
        return float(norm_s - norm_rest)


def old_difference_float32(s: np.ndarray, g: np.ndarray) -> float:
    """The formula this observer used before: ||s|| - sqrt(||s||^2 - 2 s.g + ||g||^2), all in float32."""
    s32, g32 = torch.as_tensor(s, dtype=torch.float32), torch.as_tensor(g, dtype=torch.float32)
    sn, dot, gn = s32.norm(), s32 @ g32, g32.norm()
    return float(sn - (sn**2 - 2 * dot + gn**2).clamp_min(0).sqrt())


def test_difference_has_no_cancellation_when_the_gradient_is_tiny() -> None:
    """||g|| down to 1e-8 ||s||: the old float32 formula subtracts two numbers equal to 7 digits and returns 0 or
    noise; the rewritten one, (2 s.g - ||g||^2) / (||s|| + ||s - g||) in float64, matches the exact value."""
    rng = np.random.default_rng(5)
    s = rng.standard_normal(1000).astype(np.float32).astype(np.float64)  # float32 values, as a model holds them
    cases = []
    for scale in (1e-4, 1e-6, 1e-8):
        g = (scale * rng.standard_normal(1000)).astype(np.float32).astype(np.float64)
        exact = exact_difference(s, g)
        st, gt = torch.as_tensor(s)[None], torch.as_tensor(g)[None]
        new = float(GradientObserver.gradient_difference(st @ gt.T, st.norm(dim=1), (gt * gt).sum(dim=1))[0, 0])
        assert new == pytest.approx(exact, rel=1e-9, abs=1e-12 * scale), (scale, new, exact)
        cases.append((scale, exact, old_difference_float32(s, g)))
    # the old formula: 3e-4 relative error at 1e-4 (seed 5), exactly 0 at 1e-6 and 1e-8 (measured while writing)
    assert abs(cases[0][2] - cases[0][1]) > 1e-5 * abs(cases[0][1]), cases[0]
    for _, exact, old in cases[1:]:
        assert abs(old - exact) > 0.5 * abs(exact), cases


def test_gradient_difference_of_a_zero_step_and_zero_gradient_is_zero() -> None:
    zero = torch.zeros(1, 1, dtype=torch.float64)
    assert float(GradientObserver.gradient_difference(zero, torch.zeros(1, dtype=torch.float64), zero[0])[0, 0]) == 0.0


def test_observer_difference_exact_when_the_step_dwarfs_the_gradients() -> None:
    """A client whose step is 1e4 times a record's gradient (many local steps, a large learning rate): the
    observer's difference matches the exact value from the autograd gradients; the old float32 formula
    would be off by far more than the tolerance."""
    rng = np.random.default_rng(1)
    n = 9
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = rng.integers(0, 3, n)
    spec = ModelSpec("mlp", (6,), 3, {"hidden": [8]})
    model = spec.build(0)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = torch.stack([record_grad(model, x[i], int(y[i])) for i in range(n)])
    direction = grads[:4].sum(0) + 0.5 * torch.as_tensor(rng.standard_normal(grads.shape[1]))
    step = 1e4 * float(grads.norm(dim=1).mean()) * direction / direction.norm()
    state, offset = {}, 0
    for k, p in model.named_parameters():
        state[k] = (before[k].double() - step[offset : offset + p.numel()].reshape(p.shape)).float()
        offset += p.numel()
    update = ClientUpdate(partition_id=0, state=state, num_examples=4, metrics={})
    observer = GradientObserver(spec, (x, y), 1)
    observer.on_round(RoundView(1, before, None, (0,), (update,)))
    s = (flat(before, model) - flat(state, model)).numpy()  # the step the float32 states really hold
    exact = np.array([exact_difference(s, g) for g in grads.numpy()])
    old = np.array([old_difference_float32(s, g) for g in grads.numpy()])
    tol = 1e-5 * float(grads.norm(dim=1).max())  # float32 gradient rounding, vmap vs backward
    np.testing.assert_allclose(observer.difference[0][0], exact, rtol=1e-4, atol=tol)
    assert np.abs(old - exact).max() > 10 * tol, np.abs(old - exact).max()


def test_round_without_updates_is_nan_and_checkpoints_replay() -> None:
    """A round nobody reported: NaN rows. round_delta / replay carry cosine, difference and norm; a checkpoint
    written before ``norm`` existed replays it as NaN."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 6)).astype(np.float32), rng.integers(0, 3, 5)
    spec = ModelSpec("mlp", (6,), 3, {"hidden": [8]})
    before = {k: v.detach().clone() for k, v in spec.build(0).state_dict().items()}
    observer = GradientObserver(spec, (x, y), 2)
    observer.on_round(RoundView(1, before, None, (), ()))
    assert np.isnan(observer.cosine[0]).all() and np.isnan(observer.norm[0]).all()
    local = {k: v - 0.1 for k, v in before.items()}
    observer.on_round(RoundView(2, before, None, (1,), (ClientUpdate(1, local, 5, {}),)))
    arrays, meta = observer.round_delta()
    assert set(arrays) == {"cosine", "difference", "norm"}
    again = GradientObserver(spec, (x, y), 2)
    again.replay(arrays, meta)
    for name in ("cosine", "difference", "norm"):
        np.testing.assert_array_equal(getattr(again, name)[0], getattr(observer, name)[1])
    again.replay({"cosine": arrays["cosine"], "difference": arrays["difference"]}, meta)
    assert again.norm[1].shape == (5,) and np.isnan(again.norm[1]).all()


def test_cosine_without_the_difference_is_float32_and_matches(round_one: dict) -> None:
    """Without the difference (no attack reads it) the cosine and norm are computed in float32: the same
    values as the float64 path within 1e-5 (the autograd test's tolerance is 2e-5), and the same record
    order per client wherever two cosines differ by more than that; the difference is not kept."""
    grads, steps, exact = round_one["grads"], round_one["steps"], round_one["observer"]
    x, y = round_one["records"]
    fast = GradientObserver(round_one["spec"], (x, y), NUM_CLIENTS, chunk=7, difference=False)
    fast.on_round(round_one["view"])
    assert len(fast.difference) == 0 and "difference" not in fast.round_delta()[0]
    for pid in steps:
        a, b = fast.cosine[0][pid], exact.cosine[0][pid]
        np.testing.assert_allclose(a, b, atol=1e-5)
        far = np.abs(b[:, None] - b[None, :]) > 1e-5
        assert (np.sign(a[:, None] - a[None, :]) == np.sign(b[:, None] - b[None, :]))[far].all()
    np.testing.assert_allclose(fast.norm[0], exact.norm[0], rtol=1e-5)
    assert grads.shape[0] == len(x)
