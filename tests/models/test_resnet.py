"""ResNet-18 (CIFAR stem) and Wide ResNets with GroupNorm: sizes against the papers' architectures, shapes on
tiny images, typed parameters, Opacus, and the batched trainer against one-by-one training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from fedmia.errors import InputError
from fedmia.models import MODELS, build_model
from fedmia.seeding import torch_generator
from fedmia.training import DPSpec, ModelSpec, Recipe, train, train_reference_signals
from fedmia.training.batched import train_batched

TINY = {"resnet18": {"width": 2, "groups": 2}, "wrn": {"depth": 10, "width": 1, "base": 4, "groups": 2}}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _on_meta(name: str, **params) -> torch.nn.Module:
    with torch.device("meta"):  # the architecture only: no weights drawn
        return MODELS.create(name, input_shape=(3, 32, 32), num_classes=10, **params)


def _resnet18_formula(w: int, classes: int = 10, c_in: int = 3) -> int:
    """ResNet-18's parameters from its definition (He et al. 2016, Table 1, CIFAR stem): bias-free convs, a
    norm (2 affine parameters per channel) after each, projection shortcuts at the three widenings."""
    total = 9 * c_in * w + 2 * w  # stem: 3x3 conv + norm
    c = w
    for i, out in enumerate([w, 2 * w, 4 * w, 8 * w]):
        for j in range(2):
            total += 9 * c * out + 2 * out + 9 * out * out + 2 * out
            if i > 0 and j == 0:
                total += c * out + 2 * out  # 1x1 projection + its norm
            c = out
    return total + c * classes + classes


def _wrn_formula(depth: int, k: int, classes: int = 10, c_in: int = 3) -> int:
    """WRN-depth-k's parameters from its definition (Zagoruyko & Komodakis 2016, Table 1): a 3x3 stem to 16
    channels, n = (depth-4)/6 pre-activation blocks per stage (norm, conv, norm, conv), 1x1 projections
    where the width changes, a final norm and the linear head."""
    n = (depth - 4) // 6
    total = 9 * c_in * 16
    c = 16
    for out in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += 2 * c + 9 * c * out + 2 * out + 9 * out * out
            if c != out:
                total += c * out
            c = out
    return total + 2 * c + c * classes + classes


def test_full_size_parameter_counts_match_the_papers_architectures() -> None:
    """11,173,962 is the BatchNorm ResNet-18 with the CIFAR stem (kuangliu / lira-pytorch's modified
    torchvision net); WRN-16-4 2.75M, WRN-28-2 1.47M (FixMatch's "1.5M") and WRN-28-10 36.5M (the WRN paper's
    Table 4). GroupNorm has BatchNorm's affine parameters, so the counts are the same."""
    assert _count(_on_meta("resnet18")) == _resnet18_formula(64) == 11_173_962
    assert _count(_on_meta("wrn", depth=16, width=4)) == _wrn_formula(16, 4) == 2_748_890
    assert _count(_on_meta("wrn", depth=28, width=2)) == _wrn_formula(28, 2) == 1_467_610
    assert _count(_on_meta("wrn", depth=28, width=10)) == _wrn_formula(28, 10) == 36_479_194
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in _on_meta("resnet18").modules())


@pytest.mark.parametrize("name", ["resnet18", "wrn"])
@pytest.mark.parametrize("shape", [(3, 8, 8), (3, 16, 16), (1, 9, 7)])
def test_tiny_models_map_images_to_logits(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, shape, 7, seed=0, **TINY[name])
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, 7) and torch.isfinite(out).all()
    again = build_model(name, shape, 7, seed=0, **TINY[name])
    for a, b in zip(model.parameters(), again.parameters(), strict=True):  # the seed fixes the weights
        assert torch.equal(a, b)


def test_resnet18_downsamples_three_times_and_wrn_twice() -> None:
    """The CIFAR stem keeps 32x32 (no max-pooling); ResNet-18's stages end at 32, 16, 8, 4, WRN's at 32, 16, 8."""
    sizes: dict[str, list[int]] = {"resnet18": [], "wrn": []}
    for name in sizes:
        model = build_model(name, (3, 32, 32), 10, seed=0, **TINY[name])
        for block in model.blocks:
            block.register_forward_hook(lambda _m, _i, out, name=name: sizes[name].append(out.shape[-1]))
        model(torch.zeros(1, 3, 32, 32))
    assert sizes["resnet18"] == [32, 32, 16, 16, 8, 8, 4, 4]
    assert sizes["wrn"] == [32, 16, 8]  # depth 10: one block per stage


def test_bad_parameters_are_input_errors() -> None:
    with pytest.raises(InputError, match="6n \\+ 4"):
        build_model("wrn", (3, 8, 8), 10, seed=0, depth=12)
    with pytest.raises(InputError, match="image input"):
        build_model("resnet18", (600,), 10, seed=0)
    with pytest.raises(InputError, match="groups"):
        build_model("resnet18", (3, 8, 8), 10, seed=0, width=6, groups=4)
    with pytest.raises(InputError, match="width"):
        MODELS.validate("resnet18", {"width": "4"})
    with pytest.raises(InputError, match="depth"):
        MODELS.validate("wrn", {"depth": 4})


@pytest.mark.parametrize("name", ["resnet18", "wrn"])
def test_opacus_accepts_the_models_and_one_dp_sgd_epoch_runs(name: str) -> None:
    model = build_model(name, (3, 8, 8), 10, seed=0, **TINY[name])
    assert ModuleValidator.validate(model, strict=False) == []
    g = np.random.default_rng(0)
    x, y = g.standard_normal((16, 3, 8, 8)).astype(np.float32), g.integers(0, 10, 16)
    before = [p.detach().clone() for p in model.parameters()]
    recipe = Recipe(epochs=1, batch_size=16, lr=0.1, dp=DPSpec(noise_multiplier=1.0, max_grad_norm=1.0))
    result = train(model, x, y, recipe, generator=torch_generator(0, "dp"))
    assert result.epsilon is not None and np.isfinite(result.epsilon) and result.epsilon > 0
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", ["resnet18", "wrn"])
def test_batched_training_equals_one_by_one(name: str) -> None:
    """The batched trainer runs these nets under torch.vmap (they are not Sequential stacks of layers, so
    not the grouped path): same batches, same SGD steps, so the same weights as train() up to float rounding."""
    g = np.random.default_rng(1)
    x, y = g.standard_normal((48, 3, 8, 8)).astype(np.float32), g.integers(0, 10, 48)
    keep = np.zeros((2, 48), dtype=bool)
    keep[0, :30], keep[1, 12:42] = True, True
    recipe = Recipe(epochs=2, batch_size=16, lr=0.05)
    batched = train_batched(
        [build_model(name, (3, 8, 8), 10, seed=k, **TINY[name]) for k in range(2)],
        x,
        y,
        keep,
        recipe,
        generators=[torch_generator(0, "m", k) for k in range(2)],
    )
    for k in range(2):
        seq = build_model(name, (3, 8, 8), 10, seed=k, **TINY[name])
        rows = np.flatnonzero(keep[k])
        train(seq, x[rows], y[rows], recipe, generator=torch_generator(0, "m", k))
        moved = max(
            float((a - b).detach().abs().max())
            for a, b in zip(
                seq.parameters(), build_model(name, (3, 8, 8), 10, seed=k, **TINY[name]).parameters(), strict=True
            )
        )
        assert moved > 1e-3  # training moved the weights, so agreement below is not trivial
        for a, b in zip(seq.parameters(), batched[k].parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_reference_models_train_batched_and_sequentially_alike() -> None:
    """The references' path (train_reference_signals) with a tiny ResNet-18: batched and one-by-one give the
    same signals on the eval records."""
    g = np.random.default_rng(2)
    x, y = g.standard_normal((40, 3, 8, 8)).astype(np.float32), g.integers(0, 4, 40)
    keep = np.zeros((2, 40), dtype=bool)
    keep[0, :20], keep[1, 20:] = True, True
    spec = ModelSpec("resnet18", (3, 8, 8), 4, TINY["resnet18"])
    recipe = Recipe(epochs=1, batch_size=10, lr=0.05)
    seq = train_reference_signals(spec, recipe, (x, y), keep, [(x[:8], y[:8])], seed=3, batched=False)[0]
    bat = train_reference_signals(spec, recipe, (x, y), keep, [(x[:8], y[:8])], seed=3, batched=True)[0]
    assert seq.logit_conf.shape == (2, 8)
    np.testing.assert_allclose(seq.logit_conf, bat.logit_conf, atol=1e-4)


def _randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """GroupNorm's affine parameters off their (1, 0) init, so that a norm in the wrong place shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1.0 + 0.5 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))


def _wrn_by_hand(b: torch.nn.Module, x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """WRN's pre-activation block from its definition (Zagoruyko & Komodakis 2016, Fig. 1d and their code):
    conv3x3(dropout(relu(N(conv3x3_stride(relu(N(x))))))) + shortcut, the projection reading relu(N(x))."""
    F = torch.nn.functional
    pre = F.relu(F.group_norm(x, b.norm1.num_groups, b.norm1.weight, b.norm1.bias, b.norm1.eps))
    h = F.conv2d(pre, b.conv1.weight, stride=b.conv1.stride, padding=1)
    h = F.relu(F.group_norm(h, b.norm2.num_groups, b.norm2.weight, b.norm2.bias, b.norm2.eps))
    h = F.conv2d(F.dropout(h, p, training=training), b.conv2.weight, padding=1)
    return h + (F.conv2d(pre, b.shortcut.weight, stride=b.shortcut.stride) if b.project else x)


def _basic_by_hand(b: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ResNet's post-activation basic block (He et al. 2016): relu(N(conv(relu(N(conv_stride(x))))) + s(x)),
    s the identity or N(conv1x1_stride(x)) on the raw input."""
    F = torch.nn.functional

    def gn(norm: torch.nn.GroupNorm, h: torch.Tensor) -> torch.Tensor:
        return F.group_norm(h, norm.num_groups, norm.weight, norm.bias, norm.eps)

    h = F.relu(gn(b.norm1, F.conv2d(x, b.conv1.weight, stride=b.conv1.stride, padding=1)))
    h = gn(b.norm2, F.conv2d(h, b.conv2.weight, padding=1))
    if isinstance(b.shortcut, torch.nn.Identity):
        return F.relu(h + x)
    conv, norm = b.shortcut
    return F.relu(h + gn(norm, F.conv2d(x, conv.weight, stride=conv.stride)))


def test_wrn_projection_shortcut_reads_the_pre_activated_input() -> None:
    """A forward hook on the projecting block's 1x1 shortcut: its input is relu(norm1(x)), not x."""
    model = build_model("wrn", (3, 8, 8), 10, seed=0, depth=16, width=2, base=4, groups=2)
    _randomize_norms(model, 1)
    block = model.blocks[0]  # 4 -> 8 channels: projects
    assert block.project and not model.blocks[1].project
    seen: list[torch.Tensor] = []
    block.shortcut.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    x = torch.randn(3, 4, 8, 8)
    block(x)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], torch.relu(block.norm1(x)), rtol=0, atol=0)
    assert not torch.allclose(seen[0], x)


def test_blocks_equal_their_definitions_composed_by_hand() -> None:
    """Each block (projecting and identity, both nets) against its definition with the same weights, in eval
    mode; WRN's also in train mode under one seed, which places its dropout between the convolutions (the
    same mask after conv2 or before conv1 gives other outputs). Fails for a rewired block: pre- vs
    post-activation, a moved norm/ReLU/dropout, a shortcut reading x instead of relu(norm1(x))."""
    p = 0.3
    wrn = build_model("wrn", (3, 8, 8), 10, seed=0, depth=16, width=2, base=4, groups=2, dropout=p)
    res = build_model("resnet18", (3, 8, 8), 10, seed=0, width=4, groups=2)
    for model in (wrn, res):
        _randomize_norms(model, 2)
        model.eval()
    x4, x8 = torch.randn(2, 4, 8, 8), torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        for block, x in ((wrn.blocks[0], x4), (wrn.blocks[1], x8)):
            torch.testing.assert_close(block(x), _wrn_by_hand(block, x, p, training=False))
            block.train()
            torch.manual_seed(5)
            out = block(x)
            torch.manual_seed(5)
            torch.testing.assert_close(out, _wrn_by_hand(block, x, p, training=True))
            torch.manual_seed(5)
            assert not torch.allclose(out, _wrn_by_hand(block, x, 0.0, training=False))  # dropout acted
            block.eval()
        assert isinstance(res.blocks[0].shortcut, torch.nn.Identity)
        assert not isinstance(res.blocks[2].shortcut, torch.nn.Identity)  # 4 -> 8 channels, stride 2
        for block, x in ((res.blocks[0], x4), (res.blocks[2], x4)):
            torch.testing.assert_close(block(x), _basic_by_hand(block, x))


@pytest.mark.parametrize("name", ["resnet18", "wrn"])
def test_convolutions_are_he_normal_fan_out(name: str) -> None:
    """Every convolution's weights ~ N(0, 2 / (k^2 c_out)) (torchvision's ResNet, the WRN code's MSRinit):
    the sample sd within 10% of that (PyTorch's default gives sqrt(1 / (3 k^2 c_in)): 2.4x smaller at
    c_in = c_out; fan_in differs by sqrt(2) at each widening) and tails past the uniform's sqrt(3) sd."""
    params = {"resnet18": {"width": 16, "groups": 2}, "wrn": {"depth": 10, "width": 4, "base": 8, "groups": 2}}
    model = build_model(name, (3, 8, 8), 10, seed=0, **params[name])
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 2000]
    assert len(convs) >= 5
    for conv in convs:
        w = conv.weight.detach()
        c_out, _, kh, kw = w.shape
        sd = float(w.std())
        assert abs(sd / (2.0 / (kh * kw * c_out)) ** 0.5 - 1) < 0.1, (conv, sd)
        assert float(w.abs().max()) > 2.5 * sd, conv  # normal, not uniform
