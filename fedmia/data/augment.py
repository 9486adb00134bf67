"""Geometric transforms of image batches, shared by training-time augmentation (``fedmia.training.augment``)
and LiRA's augmented queries (``fedmia.signals.release``): one function, so that a party queries the
target on exactly the transforms it was trained with.

``shift_flip`` is torchvision's ``RandomCrop(size, padding=p)`` followed by ``RandomHorizontalFlip`` with
the random choices given, vectorised over the batch. A crop of the zero-padded image at offset
(top, left) in [0, 2p]^2 is the image shifted by (dy, dx) = (top - p, left - p) with zero fill:

    crop[i, j] = x[i + dy, j + dx]          (0 where i + dy or j + dx falls outside the image)
    out[i, j]  = crop[i, W - 1 - j] if flip else crop[i, j]
"""

from __future__ import annotations

import torch


def shift_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Each image x[b] (B, C, H, W) shifted by (dy[b], dx[b]) with zero fill, then mirrored left-right where
    flip[b] (see the module docstring); dy, dx integer (B,), flip bool (B,). A new contiguous tensor."""
    if x.ndim != 4:
        raise ValueError(f"shift_flip needs images (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    dy, dx, flip = dy.to(x.device).long(), dx.to(x.device).long(), flip.to(x.device).bool()
    if b == 0:
        return x.clone()
    p = int(max(dy.abs().max(), dx.abs().max()))
    padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)  # out[.., j] reads crop[.., W-1-j]
    rows = torch.arange(h, device=x.device)[None, :] + p + dy[:, None]  # (B, H) rows of the padded image
    cols = cols + p + dx[:, None]  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C): advanced indices first
    return out.permute(0, 3, 1, 2).contiguous()
