"""Residual networks of the membership-inference literature, with GroupNorm so that Opacus can train them.

- ``resnet18``: He, Zhang, Ren & Sun 2016 ("Deep Residual Learning for Image Recognition"), ResNet-18
  with the CIFAR stem used by RMIA, ML Privacy Meter and lira-pytorch: a 3x3 stride-1 first convolution
  and no max-pooling, then four stages of two basic blocks (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2),
  global average pooling and one linear layer. A basic block is

      out = ReLU(N(conv3x3(ReLU(N(conv3x3(x))))) + s(x)),   s = identity, or N(conv1x1_stride(x)) when the
      shape changes (the "option B" projection shortcut).

  With w = 64 and 10 classes it has 11,173,962 parameters, the count of the BatchNorm original: a
  GroupNorm layer has the same affine parameters (one scale and one shift per channel).
- ``wrn``: Zagoruyko & Komodakis 2016 ("Wide Residual Networks"), WRN-d-k with n = (d - 4) / 6
  pre-activation blocks per stage, stage widths b, b k, 2 b k, 4 b k (b = 16 in the paper; strides 1, 2, 2):

      out = conv3x3(dropout(ReLU(N(conv3x3_stride(ReLU(N(x))))))) + s(x),   s = identity, or
      conv1x1_stride(ReLU(N(x))) when the width or stride changes,

  then N, ReLU, global average pooling and one linear layer; convolutions carry no bias (a normalisation
  follows each). WRN-16-4 has 2,748,890 parameters and WRN-28-2 1,467,610 (10 classes).

N is GroupNorm with min(groups, channels) groups (Wu & He 2018) instead of BatchNorm: BatchNorm mixes the
records of a batch, which per-sample gradients (DP-SGD) cannot allow, and whose running statistics would
be state outside the parameters. The global average pooling makes both nets accept any image size >= 1
(the stride-2 stages of an 8x8 input end at 1x1).

Initialisation: every convolution is He-normal, ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``
(He et al. 2015; weights ~ N(0, 2 / (k^2 c_out))), as in torchvision's ResNet and the WRN authors' Torch
code (``MSRinit``: std sqrt(2 / (kW kH nOutputPlane))); not PyTorch's default (uniform, fan_in, a = sqrt(5)).
GroupNorm starts at scale 1, shift 0; the linear head keeps PyTorch's default, as torchvision's ResNet does.

Every training path takes them: ``train()`` (targets, FL clients, DP-SGD through Opacus: GroupNorm, Conv2d
and Linear have per-sample gradient rules, ``ModuleValidator`` accepts both nets), and the batched trainer
(``train_batched``) through its ``torch.vmap`` path: they are not ``Sequential`` stacks of layers, so its
grouped-convolution path does not apply (tests/models/test_resnet.py: batched == one by one within 1e-5).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, Strict
from torch import Tensor, nn

from fedmia.errors import InputError
from fedmia.models.base import MODELS

Width = Annotated[int, Strict(), Field(ge=1)]
Depth = Annotated[int, Strict(), Field(ge=10)]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels)


def _check(name: str, input_shape: tuple[int, ...], channels: list[int], groups: int, dropout: float) -> None:
    if len(input_shape) != 3:
        raise InputError(f"{name} needs image input (C, H, W); this dataset's records have shape {input_shape}")
    uneven = sorted({c for c in channels if c % min(groups, c)})
    if uneven:  # GroupNorm splits a layer's channels into min(groups, channels) equal groups
        raise InputError(f"{name}: channels {uneven} cannot be split into groups={groups} equal groups; use multiples")
    if not 0.0 <= dropout < 1.0:
        raise InputError(f"{name}: dropout must be in [0, 1), got {dropout}")


def _he_init(model: nn.Module) -> None:
    """He-normal (fan_out, ReLU) for every convolution of ``model`` (see the module docstring)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class BasicBlock(nn.Module):
    """ResNet's basic block (post-activation): two 3x3 convolutions, a projection shortcut on a change of shape."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.norm2 = _norm(c_out, groups)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _norm(c_out, groups))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem and GroupNorm (see the module docstring)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int, groups: int) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, stride=1, padding=1, bias=False), _norm(width, groups), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        c_in = width
        for i, c in enumerate(widths):
            for j in range(2):
                blocks.append(BasicBlock(c_in, c, 2 if (i > 0 and j == 0) else 1, groups))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(c_in, num_classes)
        _he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.pool(self.blocks(self.stem(x))))


class WideBlock(nn.Module):
    """WRN's pre-activation block: norm-ReLU-conv, (dropout), norm-ReLU-conv, plus the shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm2 = _norm(c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.project = stride != 1 or c_in != c_out
        self.shortcut: nn.Module = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if self.project else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.norm1(x))
        out = self.conv2(self.dropout(self.relu(self.norm2(self.conv1(pre)))))
        # the projection reads the pre-activated input (Zagoruyko & Komodakis' code), the identity the raw input
        return out + (self.shortcut(pre) if self.project else x)


class WideResNet(nn.Module):
    """WRN-depth-width with GroupNorm (see the module docstring)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        depth: int,
        width: int,
        base: int,
        groups: int,
        dropout: float,
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [base * width, 2 * base * width, 4 * base * width]
        self.stem = nn.Conv2d(input_shape[0], base, 3, stride=1, padding=1, bias=False)
        blocks: list[nn.Module] = []
        c_in = base
        for i, c in enumerate(widths):
            for j in range(n):
                blocks.append(WideBlock(c_in, c, 2 if (i > 0 and j == 0) else 1, groups, dropout))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(_norm(c_in, groups), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(c_in, num_classes)
        _he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.head(self.blocks(self.stem(x))))


@MODELS.register("resnet18")
def resnet18(input_shape: tuple[int, ...], num_classes: int, width: Width = 64, groups: Width = 32) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 stride-1 first convolution, no max-pooling) and GroupNorm
    (He et al. 2016); ``width`` is the first stage's channels (64 in the paper; smaller for tiny tests)."""
    _check("resnet18", input_shape, [width, 2 * width, 4 * width, 8 * width], groups, 0.0)
    return ResNet18(input_shape, num_classes, width, groups)


@MODELS.register("wrn")
def wrn(
    input_shape: tuple[int, ...],
    num_classes: int,
    depth: Depth = 16,
    width: Width = 4,
    base: Width = 16,
    groups: Width = 16,
    dropout: float = 0.0,
) -> nn.Module:
    """Wide ResNet WRN-``depth``-``width`` with GroupNorm (Zagoruyko & Komodakis 2016): depth = 6n + 4
    (16: WRN-16-4, 28: WRN-28-2), ``width`` the widening factor k, ``base`` the first stage's channels
    before widening (16 in the paper; smaller for tiny tests), dropout between each block's convolutions."""
    if (depth - 4) % 6:
        raise InputError(f"wrn: depth must be 6n + 4 (10, 16, 22, 28, ...), got {depth}")
    _check("wrn", input_shape, [base, base * width, 2 * base * width, 4 * base * width], groups, dropout)
    return WideResNet(input_shape, num_classes, depth, width, base, groups, dropout)
