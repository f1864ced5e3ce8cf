"""What every generator kind's sampler shares: the `ConditionalSampler` shape (uint8 faces from labels
and per-image seeds), the generator pixel range, and reading a generator file's metadata and sha256.
`generators/registry.py` picks the kind's sampler from that metadata."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from runtime.errors import UserError


@runtime_checkable
class ConditionalSampler(Protocol):
    kind: str  # "gan" | "diffusion"

    def sample(self, labels: Tensor, seeds: Tensor | Sequence[int], **kwargs: Any) -> Tensor:
        """uint8 N x 1 x 48 x 48 images, image i of class labels[i] drawn from seeds[i]."""
        ...


def to_uint8(x: Tensor) -> Tensor:
    """Generator range [-1, 1] -> uint8 [0, 255]."""
    return ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def to_generator_range(images_uint8: Tensor) -> Tensor:
    return images_uint8.float() / 127.5 - 1.0


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _missing(path: Path) -> UserError:
    return UserError(f"{path}: generator checkpoint not found; run `fersynth train-generator` (dvc repro train_generator) first")


def read_metadata(path: str | Path) -> dict:
    """The metadata of a generator checkpoint, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("meta", "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable generator checkpoint ({e}); rerun `fersynth train-generator`") from None
