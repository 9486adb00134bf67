"""The fast batched paths: explicit MLP gradients (oracle: autograd), flat-parameter optimizer steps,
pre-gathered batches, and the vmap path for other models, against the sequential ``train()``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.data import load_dataset
from fedmia.models import build_model
from fedmia.seeding import torch_generator
from fedmia.training import ModelSpec, Recipe, train
from fedmia.training.batched import _ExplicitMLP, _Layout, mlp_layers, train_batched


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _stack(models: list[nn.Module]) -> tuple[_Layout, torch.Tensor, torch.Tensor]:
    from torch.func import stack_module_state

    params, _ = stack_module_state(models)
    layout = _Layout(params)
    flat = torch.cat([params[n].detach().reshape(-1) for n in layout.names]).double()
    return layout, flat, torch.zeros_like(flat)


@pytest.mark.parametrize(
    ("name", "params", "eps"),
    [
        ("mlp", {"hidden": [16]}, 0.0),
        ("mlp", {"hidden": [12, 8], "activation": "relu"}, 0.1),
        ("mlp", {"hidden": [12], "dropout": 0.3}, 0.0),
        ("logreg", {}, 0.2),
    ],
)
def test_explicit_gradients_equal_autograd(name: str, params: dict, eps: float) -> None:
    """Oracle: the hand-written batched backward pass equals autograd's gradient of each model's mean
    (label-smoothed) cross-entropy over its real records, padding rows weighted 0, in float64."""
    k_models, batch, dim, classes = 3, 7, 10, 4
    models = [build_model(name, (dim,), classes, seed=s, **params).double() for s in range(k_models)]
    layers = mlp_layers(models[0])
    assert layers is not None
    layout, flat, grad = _stack(models)
    g = torch.Generator().manual_seed(0)
    xb = torch.randn(k_models, batch, dim, generator=g, dtype=torch.float64)
    yb = torch.randint(0, classes, (k_models, batch), generator=g)
    counts = torch.tensor([7, 5, 3])
    real = torch.arange(batch).unsqueeze(0) < counts.unsqueeze(1)
    weight = real.double() / counts.unsqueeze(1)
    step = _ExplicitMLP(layers, layout.views(flat), layout.views(grad), eps)
    torch.manual_seed(5)
    step(xb, yb, weight)
    # autograd on each model, with the same dropout masks (drawn in the same order from the same seed)
    torch.manual_seed(5)
    hidden = [lin.out_features for lin in models[0] if isinstance(lin, nn.Linear)][:-1]
    p = params.get("dropout", 0.0)
    masks = [torch.empty(k_models, batch, h, dtype=torch.float64).bernoulli_(1 - p).div_(1 - p) for h in hidden]
    got = layout.views(grad)
    for k, model in enumerate(models):
        a = xb[k, : counts[k]]
        linears = [m for m in model if isinstance(m, nn.Linear)]
        act = torch.tanh if params.get("activation", "tanh") == "tanh" else torch.relu
        for i, lin in enumerate(linears):
            a = lin(a)
            if i < len(linears) - 1:
                a = act(a)
                if p > 0:
                    a = a * masks[i][k, : counts[k]]
        loss = nn.functional.cross_entropy(a, yb[k, : counts[k]], label_smoothing=eps)
        model.zero_grad()
        loss.backward()
        for pname, param in model.named_parameters():
            torch.testing.assert_close(got[pname][k], param.grad, atol=1e-12, rtol=1e-10)


def test_explicit_full_batches_need_no_weights() -> None:
    """weight=None (every row real) is the same gradient as explicit 1/B weights."""
    models = [build_model("mlp", (6,), 3, seed=s, hidden=[5]).double() for s in range(2)]
    layers = mlp_layers(models[0])
    assert layers is not None
    layout, flat, g1 = _stack(models)
    g2 = torch.zeros_like(g1)
    xb = torch.randn(2, 4, 6, dtype=torch.float64)
    yb = torch.randint(0, 3, (2, 4))
    _ExplicitMLP(layers, layout.views(flat), layout.views(g1), 0.0)(xb, yb, None)
    _ExplicitMLP(layers, layout.views(flat), layout.views(g2), 0.0)(
        xb, yb, torch.full((2, 4), 0.25, dtype=torch.float64)
    )
    torch.testing.assert_close(g1, g2)
    assert g1.abs().sum() > 0


def test_mlp_layers_recognizes_only_plain_mlps() -> None:
    assert mlp_layers(build_model("mlp", (8,), 3, seed=0, hidden=[4, 4])) is not None
    assert mlp_layers(build_model("logreg", (8,), 3, seed=0)) is not None
    assert mlp_layers(build_model("cnn", (1, 8, 8), 3, seed=0, channels=[2])) is None
    assert mlp_layers(nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2))) is None
    assert mlp_layers(nn.Sequential(nn.Linear(4, 4), nn.Tanh())) is None  # must end on a Linear


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_explicit_path_equals_sequential_models(digits, optimizer: str) -> None:
    """Same init, same generators: K models trained by the explicit path equal K ``train()`` runs up to
    float32 rounding (bmm vs mm summation order), including an unequal training set (masked steps),
    weight decay and label smoothing. Tolerance: the existing K=1 test's (2e-5), 3 epochs."""
    spec = ModelSpec("mlp", digits.input_shape, 10, {"hidden": [24]})
    lr = 0.05 if optimizer == "sgd" else 0.005
    recipe = Recipe(epochs=3, batch_size=16, lr=lr, optimizer=optimizer, weight_decay=1e-3, label_smoothing=0.1)
    x, y = digits.x[:200], digits.y[:200]
    keep = np.zeros((3, 200), dtype=bool)
    keep[0, :120] = True
    keep[1, 60:180] = True
    if optimizer == "sgd":
        keep[2, ::3] = True  # 67 records: fewer batches, the last step of each epoch masked
    else:  # Adam's step count is one scalar for the stack (see _step_only): equal sets only
        keep[2, 80:] = True
    gens = [torch_generator(4, "e", k) for k in range(3)]
    batched = train_batched([spec.build(k) for k in range(3)], x, y, keep, recipe, generators=gens, path="explicit")
    for k in range(3):
        seq = spec.build(k)
        train(seq, x[keep[k]], y[keep[k]], recipe, generator=torch_generator(4, "e", k))
        for a, b in zip(seq.parameters(), batched[k].parameters(), strict=True):
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)


def test_explicit_and_vmap_paths_agree_with_dropout(digits) -> None:
    """With dropout the masks are the batched path's own (not train()'s): both batched paths are
    reproducible, and explicit vs vmap (different mask draws) reach statistically indistinguishable
    held-out accuracy (each model within 0.05, means within 0.02)."""
    spec = ModelSpec("mlp", digits.input_shape, 10, {"hidden": [32], "dropout": 0.2})
    recipe = Recipe(epochs=6, batch_size=32, lr=0.05)
    x, y = digits.x[:800], digits.y[:800]
    keep = np.random.default_rng(0).random((8, 800)) < 0.5
    held = torch.as_tensor(digits.x[800:1400]), torch.as_tensor(digits.y[800:1400])

    def run(explicit: bool) -> list[nn.Module]:
        gens = [torch_generator(2, "d", k) for k in range(8)]
        models = [spec.build(k) for k in range(8)]
        return train_batched(models, x, y, keep, recipe, generators=gens, path="explicit" if explicit else "vmap")

    a, a2, b = run(True), run(True), run(False)
    for m, m2 in zip(a, a2, strict=True):
        for p, q in zip(m.parameters(), m2.parameters(), strict=True):
            assert torch.equal(p, q)
    acc = [np.array([float((m.eval()(held[0]).argmax(1) == held[1]).float().mean()) for m in ms]) for ms in (a, b)]
    assert np.abs(acc[0] - acc[1]).max() < 0.05
    assert abs(acc[0].mean() - acc[1].mean()) < 0.02
    assert acc[0].mean() > 0.8


def test_pre_gathered_chunks_do_not_change_results(digits, monkeypatch) -> None:
    """Gathering a few steps at a time (tiny GATHER_BYTES) gives bit-identical models."""
    import fedmia.training.batched as batched

    spec = ModelSpec("cnn", digits.input_shape, 10, {"channels": [4]})
    recipe = Recipe(epochs=1, batch_size=16, lr=0.05)
    x, y = digits.x[:120], digits.y[:120]
    keep = np.random.default_rng(1).random((3, 120)) < 0.5

    def run() -> list[nn.Module]:
        gens = [torch_generator(0, "c", k) for k in range(3)]
        return train_batched([spec.build(k) for k in range(3)], x, y, keep, recipe, generators=gens)

    whole = run()
    monkeypatch.setattr(batched, "GATHER_BYTES", 1)
    chunked = run()
    for m, m2 in zip(whole, chunked, strict=True):
        for p, q in zip(m.parameters(), m2.parameters(), strict=True):
            assert torch.equal(p, q)


def test_grouped_cnn_equals_sequential_models(digits) -> None:
    """The grouped conv path (K models as channel groups) trains each CNN as ``train()`` does: same
    init, same batches, unequal sets masked; float32 tolerance as above (conv summation order)."""
    spec = ModelSpec("cnn", digits.input_shape, 10, {"channels": [4, 8], "groups": 2})
    recipe = Recipe(epochs=2, batch_size=16, lr=0.05, weight_decay=1e-3)
    x, y = digits.x[:150], digits.y[:150]
    keep = np.zeros((3, 150), dtype=bool)
    keep[0, :90] = True
    keep[1, 40:130] = True
    keep[2, ::4] = True
    gens = [torch_generator(6, "g", k) for k in range(3)]
    batched = train_batched([spec.build(k) for k in range(3)], x, y, keep, recipe, generators=gens, path="grouped")
    for k in range(3):
        seq = spec.build(k)
        train(seq, x[keep[k]], y[keep[k]], recipe, generator=torch_generator(6, "g", k))
        for a, b in zip(seq.parameters(), batched[k].parameters(), strict=True):
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)


def test_grouped_layers_recognizes_cnns_only() -> None:
    from fedmia.training.batched import grouped_layers

    assert grouped_layers(build_model("cnn", (1, 8, 8), 3, seed=0, channels=[2, 4], dropout=0.1)) is not None
    assert grouped_layers(build_model("cnn", (3, 4, 4), 3, seed=0, channels=[2])) is not None  # Identity pool
    assert (
        grouped_layers(
            nn.Sequential(nn.Conv2d(1, 2, 3, groups=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(2, 2))
        )
        is None
    )
    assert grouped_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2))) is None


def test_sigmoid_form_tanh_matches_tanh_in_float32() -> None:
    """The CPU's tanh(z) = 2 sigmoid(2z) - 1 (factor 2 folded into the GEMM) gives the gradients of the
    torch.tanh form up to float32 rounding, and its activations are within 5e-7 of float64's tanh."""
    models = [build_model("mlp", (20,), 5, seed=s, hidden=[64, 32]) for s in range(4)]
    layers = mlp_layers(models[0])
    assert layers is not None
    layout, flat, _ = _stack(models)
    flat = flat.float()
    g = torch.Generator().manual_seed(1)
    xb = torch.randn(4, 16, 20, generator=g) * 3
    yb = torch.randint(0, 5, (4, 16), generator=g)
    grads = []
    for sigmoid_tanh in (True, False):
        grad = torch.zeros_like(flat)
        step = _ExplicitMLP(layers, layout.views(flat), layout.views(grad), 0.0, sigmoid_tanh=sigmoid_tanh)
        step(xb, yb, None)
        grads.append(grad)
        hidden = step._scratch[("z", 0)][: 4 * 16 * 64].view(4, 16, 64)  # first layer's activations
        p = layout.views(flat)
        bias = p[layers[0].bias].double().unsqueeze(1)  # type: ignore[index]
        exact = torch.tanh(torch.baddbmm(bias, xb.double(), p[layers[0].weight].double().transpose(1, 2)))
        assert float((hidden.double() - exact).abs().max()) < 5e-7
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    assert grads[0].abs().sum() > 0


def test_epoch_layout_is_the_batches_train_draws() -> None:
    """Oracle: the (steps, K, bs) layout holds, for each model, exactly the batches shuffled_batches()
    draws with its generator, each batch at slot j*bs, padding -1 (equal, unequal, and n < bs)."""
    from fedmia.training.batched import _epoch_layout
    from fedmia.training.train import shuffled_batches

    members = [torch.arange(0, 40), torch.arange(100, 133), torch.arange(200, 205)]
    bs = 8
    order, counts = _epoch_layout(members, bs, [torch.Generator().manual_seed(k) for k in range(3)])
    assert order.shape == (5, 3, bs)
    for k, m in enumerate(members):
        batches = shuffled_batches(len(m), min(bs, len(m)), torch.Generator().manual_seed(k))
        for j in range(order.shape[0]):
            want = m[batches[j]].tolist() if j < len(batches) else []
            got = order[j, k].tolist()
            assert got == want + [-1] * (bs - len(want))
            assert int(counts[j, k]) == len(want)
