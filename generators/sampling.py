"""What every generator kind's sampler shares: the `ConditionalSampler` shape (uint8 faces from labels
and per-image seeds), the generator pixel range, and the generator folder: its `fersynth.json` (kind,
config, label names, training summary) and its sha256. `generators/registry.py` picks the kind's
sampler from that file.

A generator is a folder in its ecosystem's own layout, so it loads without fersynth: the GAN as
`generator.safetensors` + `fersynth.json`; the diffusion model as diffusers' `save_pretrained` layout
(`unet/`, `scheduler/`) + `fersynth.json`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
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


CONFIG_FILE = "fersynth.json"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def generator_sha256(folder: str | Path) -> str:
    """sha256 of a generator folder: of every file's relative path and sha256, in sorted order (a
    folder has no single byte stream; this changes whenever any file in it does)."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise _missing(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n".encode())
    return h.hexdigest()


def _missing(path: Path) -> UserError:
    return UserError(f"{path}: no generator here (a folder with {CONFIG_FILE}); run `fersynth train-generator` "
                     "(dvc repro train_generator) first")


def read_metadata(folder: str | Path) -> dict:
    """The generator folder's `fersynth.json` (kind, config, ...), without loading its weights."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise _missing(Path(folder))
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not readable ({e}); rerun `fersynth train-generator`") from None


def write_metadata(folder: Path, meta: dict) -> None:
    (Path(folder) / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
