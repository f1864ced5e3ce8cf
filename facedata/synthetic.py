"""The synthetic set on disk (the `generate` stage's folder): reading it, and its PNG and FER2013-CSV exports."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from facedata.prepared import LabelledImages, check_images
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS

DATA_FILE = "synthetic.safetensors"


CSV_FILE = "synthetic_fer2013.csv"


def export_png(images: torch.Tensor, labels: torch.Tensor, root: Path) -> None:
    """<root>/<expression>/<i>.png, i the image's index in the dataset (its seed is seed * stride + i)."""
    from PIL import Image

    for name in EXPRESSIONS:
        (root / name).mkdir(parents=True, exist_ok=True)
    width = max(7, len(str(len(labels))))
    for i, (image, label) in enumerate(zip(images[:, 0].numpy(), labels.tolist())):
        Image.fromarray(image).save(root / EXPRESSIONS[label] / f"{i:0{width}d}.png")


def export_csv(images: torch.Tensor, labels: torch.Tensor, path: Path) -> None:
    """FER2013 layout: `emotion,pixels,Usage`, pixels space-separated row-major, Usage=Training."""
    with open(path, "w", newline="\n") as f:
        f.write("emotion,pixels,Usage\n")
        for image, label in zip(images.reshape(len(images), -1).tolist(), labels.tolist()):
            f.write(f"{label},{' '.join(map(str, image))},Training\n")


def load_synthetic(directory: str | Path = "data/synthetic") -> tuple[LabelledImages, torch.Tensor]:
    """(images + labels, seeds) of a generated set."""
    path = Path(directory) / DATA_FILE
    if not path.is_file():
        raise UserError(f"{path}: synthetic set not found; run `fersynth generate` (dvc repro generate) first")
    tensors = load_file(str(path))
    data = LabelledImages(tensors["images"], tensors["labels"])
    check_images(*data)
    return data, tensors["seeds"]


def load_sources(directory: str | Path = "data/synthetic") -> torch.Tensor | None:
    """Per image, the index (into prepared real train) of the real face it is an edit of, -1 for a face
    sampled from noise; None for a set with no edits recorded (every face sampled)."""
    tensors = load_file(str(Path(directory) / DATA_FILE))
    return tensors.get("sources")
