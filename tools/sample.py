"""`fersynth sample`: chosen expressions and seeds from any trained generator, as one grid (a row per
expression, a column per seed) and optionally one PNG per face, as stylegan2-ada-pytorch's `generate.py
--seeds` does. Face (class c, seed s) is exactly the one `generate` draws with that label and seed, so a
row of an exported set's metadata.csv can be looked at again."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from facedata.sources.image_folder import CLASS_ALIASES
from figures.grids import save_grid
from generators.config import GenerateConfig
from generators.registry import KINDS, load_sampler
from runtime import atomic
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS

MAX_FACES = 10_000  # one grid; more is a job for `generate`


def parse_seeds(text: str) -> list[int]:
    """'0-15', '3', '0,4,7-9' -> seeds in the order given."""
    seeds: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise UserError(f"--seeds: '{part.strip()}' is not a seed or a range like 0-15 (seeds are integers >= 0)")
        first = int(m.group(1))
        seeds += list(range(first, int(m.group(2) or first) + 1))
    return seeds


def parse_classes(text: str) -> list[int]:
    """'happy', 'happy,sad', 'all' (names or their aliases) -> class indices in the order given."""
    if text.strip().lower() == "all":
        return list(range(len(EXPRESSIONS)))
    classes = []
    for name in (t.strip().lower() for t in text.split(",")):
        target = CLASS_ALIASES.get(name)
        if target is None or target == "drop":
            raise UserError(f"--class: '{name}' is not an expression; use one or more of {', '.join(EXPRESSIONS)} (or all)")
        classes.append(EXPRESSIONS.index(target))
    return classes


def run_sample(generator: Path, classes: str, seeds: str, out: Path, faces_dir: Path | None = None,
               truncation: float | None = None, guidance_scale: float | None = None) -> torch.Tensor:
    """Draw every (class, seed) pair, write the grid (and the faces), return the uint8 images, class-major."""
    rows, cols = parse_classes(classes), parse_seeds(seeds)
    if len(rows) * len(cols) > MAX_FACES:
        raise UserError(f"{len(rows) * len(cols)} faces asked for; at most {MAX_FACES} in one grid (use `fersynth generate`)")
    if Path(out).suffix.lower() != ".png":
        raise UserError(f"--out {out}: the grid is a PNG; give a path ending in .png")
    sampler = load_sampler(generator)
    knob = KINDS[sampler.kind].sample_options(GenerateConfig(
        truncation=truncation, **({"guidance_scale": guidance_scale} if guidance_scale is not None else {})))
    labels = torch.tensor(rows).repeat_interleave(len(cols))
    seeds_drawn = torch.tensor(cols).repeat(len(rows))
    images = sampler.sample(labels, seeds_drawn, **knob)
    save_grid(images, Path(out), per_row=len(cols))
    if faces_dir is not None:
        from PIL import Image

        for image, label, seed in zip(images[:, 0].numpy(), labels.tolist(), seeds_drawn.tolist()):
            with atomic.atomic_path(Path(faces_dir) / EXPRESSIONS[label] / f"seed{seed:08d}.png") as tmp:
                Image.fromarray(image).save(tmp, format="PNG")
    return images
