"""GradientObserver against plain torch.autograd on a hand-built round (no Ray).

Two clients each take one SGD step from the same global model on their own records, so a client's
descent step is lr x the sum of its records' gradients: a record's gradient must align with its own
client's step more than with the other's. Cosine and difference are recomputed here, one record at a
time with autograd, and compared number for number.
"""

from __future__ import annotations

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
    return {"grads": grads, "steps": steps, "owner": owner, "observer": observer}


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
