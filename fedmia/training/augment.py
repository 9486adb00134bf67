"""Data augmentation as part of the training recipe: ``train.augment: [crop, flip]``.

The augmentations of the CIFAR papers' training (He et al. 2016, Sec. 4.2; Zagoruyko & Komodakis 2016;
LiRA, Carlini et al. 2022, and lira-pytorch: ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``):

- ``crop``: the image zero-padded by p = ``CROP_PADDING`` = 4 pixels on each side and cropped back to its
  size at a uniformly random offset, i.e. shifted by (dy, dx) ~ U{-p..p}^2 with zero fill;
- ``flip``: mirrored left-right with probability 1/2.

Applied with ``fedmia.data.augment.shift_flip`` (crop, then flip) to every training batch, vectorised over
the batch. The random choices are seeded like the batches: in each epoch, right after a model draws its
permutation of the records from its training generator, it draws one choice per slot of that permutation
from the same generator (the flips, then the row shifts, then the column shifts, each only when that
augmentation is on: with none, nothing is drawn and every stream is as without this module). So the
target, every FL client and every reference, sequential (``train()``) or batched (``train_batched``),
apply the same augmentations for the same generator, and a record's augmentation changes from epoch to
epoch. Under Poisson sampling (DP-SGD) the slots are the records of each sampled batch, drawn as the batch
arrives. DP-SGD sees one augmented copy of each sampled record per step (each record's clipped gradient
is still its only contribution, so the accounting holds); the augmentation multiplicity of De et al. 2022
(several copies per record, gradients averaged before clipping) is not implemented.
Evaluation (validation loss, training accuracy, every query) sees the records as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedmia.data.augment import shift_flip
from fedmia.errors import InputError

AUGMENTATIONS = ("crop", "flip")
CROP_PADDING = 4  # pixels: the papers' RandomCrop(32, padding=4)


def check_augment(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple, or InputError naming what is allowed (each of ``AUGMENTATIONS`` at most once)."""
    names = tuple(names)
    unknown = [a for a in names if a not in AUGMENTATIONS]
    if unknown:
        raise InputError(f"augment: unknown augmentation(s) {unknown}; allowed: {list(AUGMENTATIONS)} (or none)")
    twice = sorted({a for a in names if names.count(a) > 1})
    if twice:
        raise InputError(f"augment lists {', '.join(twice)} twice")
    return names


@dataclass(frozen=True)
class Augmentation:
    """The random augmentation of ``names``: a crop of ``padding`` pixels (0: none) and/or a flip."""

    padding: int = 0
    flip: bool = False

    @staticmethod
    def of(names: Sequence[str], padding: int = CROP_PADDING) -> Augmentation | None:
        """The augmentation ``names`` ask for, or None for none (nothing is drawn, nothing applied)."""
        names = check_augment(names)
        if not names:
            return None
        return Augmentation(padding=padding if "crop" in names else 0, flip="flip" in names)

    def draw(self, n: int, generator: torch.Generator) -> AugmentDraws:
        """One random choice per slot 0..n-1, from ``generator`` (flips, then row and column shifts)."""
        zeros = torch.zeros(n, dtype=torch.long)
        flip = torch.randint(0, 2, (n,), generator=generator).bool() if self.flip else zeros.bool()
        p = self.padding
        dy = torch.randint(-p, p + 1, (n,), generator=generator) if p else zeros
        dx = torch.randint(-p, p + 1, (n,), generator=generator) if p else zeros
        return AugmentDraws(dy, dx, flip)


@dataclass(frozen=True)
class AugmentDraws:
    """Per-slot shifts (dy, dx) and flips, (n,) each, on the CPU."""

    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor

    def take(self, slots: torch.Tensor | slice | tuple[int | slice, ...]) -> AugmentDraws:
        return AugmentDraws(self.dy[slots], self.dx[slots], self.flip[slots])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The images x (B, C, H, W), one slot each, augmented."""
        return shift_flip(x, self.dy, self.dx, self.flip)


def check_images(x: torch.Tensor, names: Sequence[str]) -> None:
    """InputError unless records ``x`` are images (N, C, H, W): the augmentations move pixels."""
    if names and x.ndim != 4:
        raise InputError(
            f"train.augment {list(names)} needs image records (C, H, W); these records have shape "
            f"{tuple(x.shape[1:])}: set train.augment: [] for non-image data"
        )
