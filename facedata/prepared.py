"""The on-disk format every stage exchanges: one safetensors file per split plus a manifest.

`<dir>/<split>.safetensors` holds `images` (uint8, N x 1 x 48 x 48) and `labels` (int64, N);
`<dir>/manifest.json` says where the data came from and what was done to it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from runtime import atomic
from runtime.errors import UserError

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 48


class LabelledImages(NamedTuple):
    images: torch.Tensor  # uint8 N x 1 x 48 x 48
    labels: torch.Tensor  # int64 N

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, index: torch.Tensor) -> "LabelledImages":
        return LabelledImages(self.images[index], self.labels[index])


def check_images(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must be uint8 N x 1 x 48 x 48, got {images.dtype} {tuple(images.shape)}")
    if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be int64 of length {images.shape[0]}, got {labels.dtype} {tuple(labels.shape)}")


def encode_split(data: LabelledImages) -> bytes:
    check_images(data.images, data.labels)
    return save({"images": data.images.contiguous(), "labels": data.labels.contiguous()})


def save_split(path: str | Path, data: LabelledImages) -> str:
    """Write one split atomically; returns the file's sha256."""
    blob = encode_split(data)
    atomic.write_bytes(path, blob)
    return hashlib.sha256(blob).hexdigest()


def load_split(path: str | Path) -> LabelledImages:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: prepared split not found; run `fersynth prepare` (or `dvc repro prepare`) first")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e}); rerun `fersynth prepare`") from None
    data = LabelledImages(tensors["images"], tensors["labels"])
    check_images(*data)
    return data


def load_prepared(directory: str | Path = "data/prepared") -> dict[str, LabelledImages]:
    """All splits of a prepared dataset, in one call."""
    directory = Path(directory)
    return {split: load_split(directory / f"{split}.safetensors") for split in SPLITS}


def load_manifest(directory: str | Path = "data/prepared") -> dict:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise UserError(f"{path}: manifest not found; run `fersynth prepare` first")
    return json.loads(path.read_text())
