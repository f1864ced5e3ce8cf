"""DiffAugment: differentiable augmentation of real AND fake batches before the discriminator.

After Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training": augmenting
only the reals teaches D the augmentations as part of the data; augmenting both with ops that are
differentiable w.r.t. the image lets G's gradient pass through, which keeps D from overfitting a
small training set. Hand-written (as in the paper's reference code) because no kept library ships it;
torchvision's v2 transforms draw one set of parameters per batch, not per image.

Images are in [-1, 1]. Random parameters come from an explicit torch.Generator so a resumed run
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import torch
from torch import Tensor


def parse_policy(policy: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in policy.split(",") if p.strip())


def diff_augment(x: Tensor, policy: str | tuple[str, ...], generator: torch.Generator) -> Tensor:
    """Apply the policy's ops ("translation", "cutout", "color" = brightness + contrast) per image."""
    ops = parse_policy(policy) if isinstance(policy, str) else policy
    for op in ops:
        if op in ("color", "brightness"):
            x = brightness(x, generator)
        if op in ("color", "contrast"):
            x = contrast(x, generator)
        if op == "translation":
            x = translation(x, generator)
        elif op == "cutout":
            x = cutout(x, generator)
    return x


def _uniform(n: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.rand(n, 1, 1, 1, generator=generator).to(device=device, dtype=dtype)


def brightness(x: Tensor, generator: torch.Generator) -> Tensor:
    """Add U(-0.5, 0.5) per image (the paper's range for [-1, 1] images)."""
    return x + (_uniform(len(x), generator, x.device, x.dtype) - 0.5)


def contrast(x: Tensor, generator: torch.Generator) -> Tensor:
    """Scale around each image's mean by U(0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(len(x), generator, x.device, x.dtype) + 0.5) + mean


def translation(x: Tensor, generator: torch.Generator, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to ratio * size pixels, filling with zeros (one gather, exact)."""
    n, c, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shift = torch.rand(n, 2, generator=generator)
    dy = (shift[:, 0] * (2 * sy + 1)).long().clamp_(max=2 * sy)  # offset into the padded image
    dx = (shift[:, 1] * (2 * sx + 1)).long().clamp_(max=2 * sx)
    padded = torch.nn.functional.pad(x, (sx, sx, sy, sy))
    rows = (torch.arange(h)[None, :] + dy[:, None]).to(x.device)  # (n, h)
    cols = (torch.arange(w)[None, :] + dx[:, None]).to(x.device)  # (n, w)
    wp = w + 2 * sx
    index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, index).reshape(n, c, h, w)


def cutout(x: Tensor, generator: torch.Generator, ratio: float = 0.5) -> Tensor:
    """Zero one square of ratio * size per image, centred anywhere (it may hang over the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    centre = torch.rand(n, 2, generator=generator)
    top = (centre[:, 0] * (h + 1 - ch % 2)).long() - ch // 2
    left = (centre[:, 1] * (w + 1 - cw % 2)).long() - cw // 2
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + ch)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + cw)[:, None])
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(device=x.device, dtype=x.dtype)
