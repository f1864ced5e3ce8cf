"""Image grids written as PNG (atomically): training sample grids, the filter's contact sheets and
nearest-copy pairs."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision

from runtime import atomic
from runtime.labels import EXPRESSIONS

GRID_UPSCALE = 2


def save_grid(images_uint8: torch.Tensor, path: Path, per_row: int | None = None) -> None:
    """Row-major grid images (by default 7 rows, one per expression) -> an upscaled PNG, atomically."""
    per_row = per_row or max(1, len(images_uint8) // len(EXPRESSIONS))
    grid = torchvision.utils.make_grid(images_uint8.float() / 255, nrow=per_row, padding=2, pad_value=1.0)[:1]
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=GRID_UPSCALE, mode="nearest")[0]
    with atomic.atomic_path(path) as tmp:
        torchvision.utils.save_image(grid, tmp, format="PNG")


def contact_sheet(images: torch.Tensor, labels: torch.Tensor, kept: torch.Tensor, per_class: int, path: Path) -> None:
    """One row per expression: up to `per_class` kept faces, a blank, then up to `per_class` rejected."""
    blank = torch.full((1, 48, 48), 255, dtype=torch.uint8)
    tiles = []
    for c in range(len(EXPRESSIONS)):
        for group in (kept, ~kept):
            idx = torch.nonzero((labels == c) & group).flatten()[:per_class]
            row = [images[i] for i in idx.tolist()] + [blank] * (per_class - len(idx))
            tiles.extend(row)
            if group is kept:
                tiles.append(blank)
    grid = torchvision.utils.make_grid(torch.stack(tiles).float() / 255, nrow=2 * per_class + 1, padding=2, pad_value=1.0)
    with atomic.atomic_path(path) as tmp:
        torchvision.utils.save_image(grid[:1], tmp, format="PNG")


def pairs_sheet(fake: torch.Tensor, real: torch.Tensor, path: Path) -> None:
    """Synthetic faces (top row) above their nearest real training faces (bottom row)."""
    if len(fake) == 0:
        return
    grid = torchvision.utils.make_grid(torch.cat([fake, real]).float() / 255, nrow=len(fake), padding=2, pad_value=1.0)
    with atomic.atomic_path(path) as tmp:
        torchvision.utils.save_image(grid[:1], tmp, format="PNG")


def sample_sheet(real_images: torch.Tensor, real_labels: torch.Tensor, synthetic_images: torch.Tensor,
                 synthetic_labels: torch.Tensor, kept: torch.Tensor, path: Path, per_group: int = 6) -> None:
    """Per expression (rows): real faces | kept synthetic | rejected synthetic, upscaled 2x."""
    blank = torch.full((1, 48, 48), 255, dtype=torch.uint8)
    tiles = []
    for c in range(len(EXPRESSIONS)):
        for images, mask in ((real_images, real_labels == c), (synthetic_images, (synthetic_labels == c) & kept),
                             (synthetic_images, (synthetic_labels == c) & ~kept)):
            idx = torch.nonzero(mask).flatten()[:per_group].tolist()
            tiles += [images[i] for i in idx] + [blank] * (per_group - len(idx)) + [blank]
    grid = torchvision.utils.make_grid(torch.stack(tiles).float() / 255, nrow=3 * (per_group + 1), padding=2, pad_value=1.0)
    grid = torch.nn.functional.interpolate(grid[None, :1], scale_factor=2, mode="nearest")[0]
    with atomic.atomic_path(path) as tmp:
        torchvision.utils.save_image(grid, tmp, format="PNG")
