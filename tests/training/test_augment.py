"""Training-time augmentation (crop with zero padding, left-right flip): the transform against its
definition, the seeded draws, the hooks of train() and train_batched(), and the cifar-like images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmia.data import load_dataset
from fedmia.data.augment import shift_flip
from fedmia.errors import InputError
from fedmia.experiment.config import ConfigError, config_from_dict
from fedmia.models import build_model
from fedmia.seeding import torch_generator
from fedmia.training import DPSpec, Recipe, train
from fedmia.training.augment import CROP_PADDING, Augmentation
from fedmia.training.batched import train_batched


def _crop_then_flip(img: torch.Tensor, top: int, left: int, flip: bool, p: int) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding=p) at offset (top, left), then HorizontalFlip, for one image."""
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * p, w + 2 * p)
    padded[:, p : p + h, p : p + w] = img
    out = padded[:, top : top + h, left : left + w]
    return out.flip(-1) if flip else out


def test_shift_flip_on_a_hand_computed_image() -> None:
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # rows 1 2 3 / 4 5 6 / 7 8 9
    up = shift_flip(x, torch.tensor([1]), torch.tensor([0]), torch.tensor([False]))
    assert up[0, 0].tolist() == [[4, 5, 6], [7, 8, 9], [0, 0, 0]]  # out[i, j] = x[i + 1, j]
    mirrored = shift_flip(x, torch.tensor([0]), torch.tensor([0]), torch.tensor([True]))
    assert mirrored[0, 0].tolist() == [[3, 2, 1], [6, 5, 4], [9, 8, 7]]
    both = shift_flip(x, torch.tensor([0]), torch.tensor([1]), torch.tensor([True]))
    assert both[0, 0].tolist() == [[0, 3, 2], [0, 6, 5], [0, 9, 8]]  # crop x[i, j + 1], then mirror


def test_shift_flip_is_random_crop_then_flip_for_every_offset() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2 * 9 * 9, 3, 5, 6, generator=g)
    p = 4
    offsets = [(t, left, f) for t in range(2 * p + 1) for left in range(2 * p + 1) for f in (False, True)]
    dy = torch.tensor([t - p for t, _, _ in offsets])
    dx = torch.tensor([left - p for _, left, _ in offsets])
    flip = torch.tensor([f for _, _, f in offsets])
    out = shift_flip(x, dy, dx, flip)
    for b, (t, left, f) in enumerate(offsets):
        assert torch.equal(out[b], _crop_then_flip(x[b], t, left, f, p))


def test_flip_twice_and_zero_padding_are_the_identity() -> None:
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    zeros, flips = torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.bool)
    assert torch.equal(shift_flip(shift_flip(x, zeros, zeros, flips), zeros, zeros, flips), x)
    crop0 = Augmentation.of(["crop"], padding=0)
    assert crop0 is not None
    assert torch.equal(crop0.draw(6, torch_generator(0, "a")).apply(x), x)
    assert Augmentation.of([]) is None


def test_draws_are_seeded_in_range_and_change_from_epoch_to_epoch() -> None:
    aug = Augmentation.of(["crop", "flip"])
    assert aug is not None and aug.padding == CROP_PADDING == 4
    g1, g2 = torch_generator(7, "aug"), torch_generator(7, "aug")
    first, again = aug.draw(500, g1), aug.draw(500, g2)
    assert torch.equal(first.dy, again.dy) and torch.equal(first.dx, again.dx) and torch.equal(first.flip, again.flip)
    second = aug.draw(500, g1)  # the next epoch's draws from the same stream
    assert not torch.equal(first.dy, second.dy) and not torch.equal(first.flip, second.flip)
    assert set(first.dy.tolist()) == set(range(-4, 5)) == set(first.dx.tolist())
    assert 0.4 < first.flip.float().mean() < 0.6
    only_flip = Augmentation.of(["flip"])
    assert only_flip is not None and not only_flip.draw(50, g1).dy.any()


def _images(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return g.random((n, 3, 8, 8), dtype=np.float32), g.integers(0, 3, n)


def test_train_applies_the_drawn_augmentations_to_each_batch() -> None:
    """Oracle: a hand-written loop that draws the permutation, then one augmentation per slot, from the same
    generator, and takes plain SGD steps on the augmented batches, ends at train()'s weights."""
    x, y = _images()
    recipe = Recipe(epochs=2, batch_size=16, lr=0.1, momentum=0.0, augment=("crop", "flip"))
    model = build_model("logreg", (3, 8, 8), 3, seed=0)
    train(model, x, y, recipe, generator=torch_generator(0, "t"))
    ref = build_model("logreg", (3, 8, 8), 3, seed=0)
    g = torch_generator(0, "t")
    aug = Augmentation.of(recipe.augment)
    assert aug is not None
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(recipe.epochs):
        perm = torch.randperm(len(yt), generator=g)
        draws = aug.draw(len(yt), g)
        for a in range(0, len(yt), 16):
            idx = perm[a : a + 16]
            xb = shift_flip(xt[idx], draws.dy[a : a + 16], draws.dx[a : a + 16], draws.flip[a : a + 16])
            loss = torch.nn.functional.cross_entropy(ref(xb), yt[idx])
            grads = torch.autograd.grad(loss, list(ref.parameters()))
            with torch.no_grad():
                for p, gr in zip(ref.parameters(), grads, strict=True):
                    p -= 0.1 * gr
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    plain = build_model("logreg", (3, 8, 8), 3, seed=0)
    train(plain, x, y, Recipe(epochs=2, batch_size=16, lr=0.1, momentum=0.0), generator=torch_generator(0, "t"))
    assert not torch.allclose(plain[1].weight, model[1].weight, atol=1e-4)  # the augmentation changed training


def test_batched_training_augments_as_train_does() -> None:
    """train_batched draws each model's augmentations from its generator after its permutation, as train():
    the same weights, model by model, also when one model's training set is shorter (padded slots)."""
    x, y = _images(48, 1)
    keep = np.zeros((2, 48), dtype=bool)
    keep[0, :30], keep[1, 5:25] = True, True
    recipe = Recipe(epochs=2, batch_size=8, lr=0.05, augment=("crop", "flip"))
    kw = {"channels": [4], "groups": 2}
    batched = train_batched(
        [build_model("cnn", (3, 8, 8), 3, seed=k, **kw) for k in range(2)],
        x,
        y,
        keep,
        recipe,
        generators=[torch_generator(0, "b", k) for k in range(2)],
    )
    for k in range(2):
        seq = build_model("cnn", (3, 8, 8), 3, seed=k, **kw)
        rows = np.flatnonzero(keep[k])
        train(seq, x[rows], y[rows], recipe, generator=torch_generator(0, "b", k))
        for a, b in zip(seq.parameters(), batched[k].parameters(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_augmentation_of_non_image_records_is_an_input_error() -> None:
    with pytest.raises(InputError, match="image records"):
        train(build_model("mlp", (5,), 2, seed=0), np.zeros((4, 5), np.float32), np.zeros(4, np.int64),
              Recipe(epochs=1, augment=("flip",)), generator=torch_generator(0, "x"))  # fmt: skip
    with pytest.raises(InputError, match="allowed"):
        Recipe(augment=("rotate",))
    with pytest.raises(ConfigError, match="not an image dataset"):
        config_from_dict({"data": {"dataset": "purchase-like"}, "train": {"augment": ["flip"]}})
    cfg = config_from_dict({"data": {"dataset": "cifar-like", "params": {"n": 100}}, "train": {"augment": ["crop"]}})
    assert cfg.train.recipe().augment == ("crop",)


def test_cifar_like_images_are_seeded_and_cifar_shaped() -> None:
    d = load_dataset("cifar-like", n=300)
    assert d.x.shape == (300, 3, 32, 32) and d.x.dtype == np.float32 and d.num_classes == 10
    assert d.x.min() >= 0.0 and d.x.max() <= 1.0
    assert set(np.unique(d.y)) == set(range(10))
    again = load_dataset("cifar-like", n=300)
    assert np.array_equal(d.x, again.x) and np.array_equal(d.y, again.y)
    other = load_dataset("cifar-like", n=300, seed=1)
    assert not np.array_equal(d.x, other.x)
    small = load_dataset("cifar-like", n=20, size=8, channels=1, classes=4)
    assert small.x.shape == (20, 1, 8, 8) and small.num_classes == 4
    with pytest.raises(InputError):
        load_dataset("cifar-like", n=5)


def test_dp_sgd_with_augmentation_is_seeded_by_the_generator() -> None:
    """Under Poisson sampling (DP-SGD) each sampled batch draws its augmentations as it arrives: the same
    generator gives the same weights, and the augmentation changes them."""
    x, y = _images(40, 2)
    kw = {"channels": [4], "groups": 2}

    def weights(augment: tuple[str, ...]) -> torch.Tensor:
        model = build_model("cnn", (3, 8, 8), 3, seed=0, **kw)
        recipe = Recipe(epochs=2, batch_size=10, lr=0.1, augment=augment, dp=DPSpec(noise_multiplier=1.0))
        result = train(model, x, y, recipe, generator=torch_generator(0, "dp"))
        assert result.epsilon is not None and result.epsilon > 0
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first = weights(("crop", "flip"))
    assert torch.equal(first, weights(("crop", "flip")))
    assert not torch.allclose(first, weights(()), atol=1e-4)
