"""Preprocessing, batch augmentation and test-time-augmentation views for 48x48 grayscale faces.

Everything here works on whole batches of tensors (N, C, H, W), on CPU or CUDA, with no per-image
Python loop and no PIL.

Why the geometric ops are hand-written: torchvision transforms v2 draw ONE set of random parameters
per call, so applied to a batch tensor they would crop/rotate/flip every image identically. Per-sample
randomness therefore comes from one (N, K) uniform draw, and the ops are built from
`F.affine_grid`/`F.grid_sample` (rotation + scale + crop-shift + flip in a single resampling pass),
index arithmetic with one `gather` (integer crop-shift/flip only, exact), broadcast per-sample factors
(brightness/contrast) and per-sample rectangle masks (erasing). torchvision is used where it already
works per image: `torchvision.transforms.v2.functional.equalize` equalises each image of a uint8
batch separately (checked in tests/test_augment.py).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from runtime.config import Section
from runtime.errors import UserError

# Fixed normalisation constants: round values close to FER2013's pixel statistics
# (mean ~0.51, std ~0.25 on [0, 1]); also close to ImageNet's gray mean/std for pretrained nets.
MEAN: float = 0.5
STD: float = 0.25

PAD_MODES: dict[str, str] = {"reflect": "reflection", "zeros": "zeros", "border": "border"}
TTA_MODES: tuple[str, ...] = ("none", "flip", "flip_crops")

ERASE_AREA = (0.02, 0.20)  # fraction of the image
ERASE_RATIO = (0.3, 3.3)  # height / width, drawn log-uniformly

# columns of the per-sample uniform draw; always drawn in full so that switching one op on or off
# does not change the random parameters of the others under the same seed
_FLIP, _ANGLE, _SCALE, _DX, _DY, _BRIGHT, _CONTRAST, _ERASE, _E_AREA, _E_RATIO, _E_TOP, _E_LEFT = range(12)
_N_PARAMS = 12


class AugmentConfig(Section):
    """`augment:` of a classifier section: training augmentation settings; 0 / False switches an op off."""

    hflip: bool = True
    crop_padding: int = Field(4, ge=0)  # random crop of the image padded by this many pixels (= shift in [-p, p])
    rotation_deg: float = Field(10.0, ge=0, le=180)  # rotation angle uniform in [-r, r] degrees
    scale: float = Field(0.1, ge=0, lt=1)  # zoom factor uniform in [1 - s, 1 + s]
    brightness: float = Field(0.2, ge=0, lt=1)  # pixel factor uniform in [1 - b, 1 + b]
    contrast: float = Field(0.2, ge=0, lt=1)  # contrast factor uniform in [1 - c, 1 + c] around the image mean
    erasing_p: float = Field(0.25, ge=0, le=1)  # probability of erasing one rectangle (2-20% of the area) per image
    equalize: bool = False  # histogram equalisation in preprocess(), train and eval
    pad_mode: Literal["reflect", "zeros", "border"] = "reflect"  # fill outside the image for crop/rotation

    @classmethod
    def off(cls) -> AugmentConfig:
        """Every training op switched off."""
        return cls(hflip=False, crop_padding=0, rotation_deg=0.0, scale=0.0, brightness=0.0, contrast=0.0, erasing_p=0.0)

    @property
    def any_enabled(self) -> bool:
        return bool(
            self.hflip or self.crop_padding or self.rotation_deg or self.scale
            or self.brightness or self.contrast or self.erasing_p
        )


# --------------------------------------------------------------------------------------------------
# preprocessing


def preprocess(images_uint8: Tensor, equalize: bool) -> Tensor:
    """uint8 (N, 1, H, W) or (N, H, W) -> normalised float32 (N, 1, H, W): (x/255 - MEAN) / STD."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"preprocess expects uint8 images, got {images_uint8.dtype}")
    x = images_uint8
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"preprocess expects (N, 1, H, W) or (N, H, W), got shape {tuple(images_uint8.shape)}")
    if equalize:
        x = TF.equalize(x)  # per image (histograms over the last two dims of each image)
    return x.to(torch.float32).mul_(1.0 / (255.0 * STD)).sub_(MEAN / STD)


def denormalize(x: Tensor) -> Tensor:
    """Inverse of the normalisation in preprocess: float in [0, 1] (clamped)."""
    return (x * STD + MEAN).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# training augmentation


def augment_batch(x: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Randomly augment a normalised float batch (N, C, H, W) with independent parameters per sample.

    Deterministic for a given generator state. The generator may live on the CPU while x is on CUDA
    (parameters are drawn on the generator's device and moved). Returns a new tensor of the same
    shape and dtype; with every op off it equals x exactly.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    u = torch.rand((n, _N_PARAMS), generator=generator, device=generator.device, dtype=torch.float32)
    u = u.to(x.device, non_blocking=True)

    out = x
    if cfg.rotation_deg > 0 or cfg.scale > 0:
        out = _affine(out, u, cfg)  # rotation + scale + crop shift + flip in one resampling
    elif cfg.crop_padding > 0 or cfg.hflip:
        out = _shift_flip(out, u, cfg)  # exact integer shift / flip with one gather
    if cfg.brightness > 0 or cfg.contrast > 0:
        out = _photometric(out, u, cfg)
    if cfg.erasing_p > 0:
        out = _erase(out, u, cfg)
    return out.clone() if out is x else out


def _integer_shifts(u: Tensor, padding: int) -> tuple[Tensor, Tensor]:
    """Per-sample integer shifts in [-padding, padding] (random crop of the padded image)."""
    span = 2 * padding + 1
    dx = (u[:, _DX] * span).floor().clamp_(max=span - 1) - padding
    dy = (u[:, _DY] * span).floor().clamp_(max=span - 1) - padding
    return dx, dy


def _affine(x: Tensor, u: Tensor, cfg: AugmentConfig) -> Tensor:
    h, w = x.shape[-2:]
    angle = (2 * u[:, _ANGLE] - 1) * math.radians(cfg.rotation_deg)
    zoom = 1 + (2 * u[:, _SCALE] - 1) * cfg.scale  # > 1 zooms in
    sign = torch.where(u[:, _FLIP] < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones_like(angle)
    if cfg.crop_padding > 0:
        dx, dy = _integer_shifts(u, cfg.crop_padding)
    else:
        dx = dy = torch.zeros_like(angle)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # theta maps output to input coordinates in grid_sample's normalised [-1, 1] units (flip first,
    # then rotation/zoom, then the crop shift); the h/w factors keep the rotation isotropic in pixels
    # for non-square images.
    theta = torch.stack(
        [
            torch.stack([cos * sign, -sin * (h / w), 2 * dx / w], dim=1),
            torch.stack([sin * sign * (w / h), cos, 2 * dy / h], dim=1),
        ],
        dim=1,
    )
    grid = _affine_grid(theta, h, w).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=PAD_MODES[cfg.pad_mode], align_corners=False)


def _affine_grid(theta: Tensor, h: int, w: int) -> Tensor:
    """Same result as F.affine_grid(theta, (N, C, h, w), align_corners=False), built by broadcasting.

    F.affine_grid does a batched (HW x 3) @ (3 x 2) matmul that costs ~3-5 ms per 256 48x48 images
    on a 2-core CPU; two broadcast adds written straight into the grid cost ~0.5 ms.
    """
    theta = theta.to(torch.float32)
    xs = ((torch.arange(w, device=theta.device, dtype=torch.float32) * 2 + 1) / w - 1).view(1, 1, w)
    ys = ((torch.arange(h, device=theta.device, dtype=torch.float32) * 2 + 1) / h - 1).view(1, h, 1)
    t = theta.reshape(-1, 6, 1, 1)
    grid = torch.empty(theta.shape[0], h, w, 2, device=theta.device, dtype=torch.float32)
    torch.add(t[:, 0] * xs, t[:, 1] * ys + t[:, 2], out=grid[..., 0])  # x_in = a x + b y + tx
    torch.add(t[:, 3] * xs, t[:, 4] * ys + t[:, 5], out=grid[..., 1])  # y_in = c x + d y + ty
    return grid


def _shift_flip(x: Tensor, u: Tensor, cfg: AugmentConfig) -> Tensor:
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=torch.long).expand(n, h)
    cols = torch.arange(w, device=x.device, dtype=torch.long).expand(n, w)
    if cfg.hflip:
        cols = torch.where((u[:, _FLIP] < 0.5)[:, None], (w - 1) - cols, cols)
    valid = None
    if cfg.crop_padding > 0:
        dx, dy = _integer_shifts(u, cfg.crop_padding)
        rows = rows + dy.long()[:, None]
        cols = cols + dx.long()[:, None]
        if cfg.pad_mode == "reflect":  # like F.pad(mode="reflect"): -1 -> 1, h -> h - 2
            rows = _reflect_index(rows, h)
            cols = _reflect_index(cols, w)
        elif cfg.pad_mode == "border":
            rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        else:  # zeros
            valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
            rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    index = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    out = x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)
    if valid is not None:
        out = out.masked_fill(~valid[:, None], 0.0)
    return out


def _reflect_index(idx: Tensor, size: int) -> Tensor:
    """Reflect indices into [0, size) without repeating the edge (valid for |overshoot| < size)."""
    idx = idx.abs()
    return torch.where(idx > size - 1, 2 * (size - 1) - idx, idx)


def _photometric(x: Tensor, u: Tensor, cfg: AugmentConfig) -> Tensor:
    """Brightness (multiplicative) then contrast (around each image's mean), in [0, 1] pixel units."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    p = x * STD + MEAN
    if cfg.brightness > 0:
        factor = (1 + (2 * u[:, _BRIGHT] - 1) * cfg.brightness).to(x.dtype).view(shape)
        p = (p * factor).clamp_(0.0, 1.0)
    if cfg.contrast > 0:
        factor = (1 + (2 * u[:, _CONTRAST] - 1) * cfg.contrast).to(x.dtype).view(shape)
        mean = p.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        p = ((p - mean) * factor + mean).clamp_(0.0, 1.0)
    return (p - MEAN) / STD


def _erase(x: Tensor, u: Tensor, cfg: AugmentConfig) -> Tensor:
    """With probability erasing_p per sample, set one random rectangle to 0 (= the mean gray)."""
    n, _, h, w = x.shape
    area = (ERASE_AREA[0] + u[:, _E_AREA] * (ERASE_AREA[1] - ERASE_AREA[0])) * (h * w)
    lo, hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    ratio = torch.exp(lo + u[:, _E_RATIO] * (hi - lo))
    eh = torch.sqrt(area * ratio).round().clamp_(1, h)
    ew = torch.sqrt(area / ratio).round().clamp_(1, w)
    top = (u[:, _E_TOP] * (h - eh + 1)).floor()
    left = (u[:, _E_LEFT] * (w - ew + 1)).floor()
    rows = torch.arange(h, device=x.device, dtype=torch.float32)
    cols = torch.arange(w, device=x.device, dtype=torch.float32)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # (n, h)
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (n, w)
    apply = u[:, _ERASE] < cfg.erasing_p
    mask = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)


# --------------------------------------------------------------------------------------------------
# test-time augmentation


def tta_views(x: Tensor, mode: str, *, shift: int = 2) -> list[Tensor]:
    """Views of a batch for test-time augmentation.

    "none" -> [x]; "flip" -> [x, hflip(x)]; "flip_crops" -> x, hflip(x), then 4 crops shifted by
    `shift` px diagonally (reflect padding) each followed by its flip: 10 views.
    """
    if mode == "none":
        return [x]
    if mode not in TTA_MODES:
        raise UserError(f"unknown tta mode {mode!r}; choose one of: {', '.join(TTA_MODES)}")
    views = [x, torch.flip(x, dims=(-1,))]
    if mode == "flip_crops":
        h, w = x.shape[-2:]
        padded = F.pad(x, (shift, shift, shift, shift), mode="reflect")
        for oy, ox in ((0, 0), (0, 2 * shift), (2 * shift, 0), (2 * shift, 2 * shift)):
            crop = padded[..., oy : oy + h, ox : ox + w]
            views += [crop, torch.flip(crop, dims=(-1,))]
    return views


@torch.no_grad()
def tta_probabilities(model: nn.Module, x: Tensor, mode: str) -> Tensor:
    """Class probabilities averaged over the TTA views (softmax per view, then mean)."""
    views = tta_views(x, mode)
    total = None
    for view in views:
        probs = torch.softmax(model(view).float(), dim=1)
        total = probs if total is None else total + probs
    return total / len(views)
