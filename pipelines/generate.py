"""Stage `generate` (and the `fersynth generate` tool): a labelled synthetic dataset from a trained
generator of either kind.

How many per class: `per_class` (N each), `balance` (top every class up to the largest real class
count) or `counts` (7 numbers). Image i, in file order, is drawn from z-seed
`seed * 10_000_000 + i`, so with the generator file (its sha256 is in the manifest), its label and
its seed any image can be regenerated exactly.

With `mode: edit` (diffusion only) every image is instead an SDEdit of a real training face toward its
target expression: sources come from the real train faces of `edit_from` (default: every expression
but the target), drawn by a seeded permutation; image i records its source (an index into
data/prepared/train.safetensors), and (generator, source, label, seed, strength) regenerates it.
Edits derive from real people's faces: the manifest says so, and `fersynth export` refuses them
unless told otherwise.

With `source: folder` nothing is sampled: the faces of that folder (made by any generator;
`<class>/<image>` or a Hugging Face imagefolder with metadata.csv, class names through data's aliases
and `class_map`) are read exactly as `prepare` reads image folders, and written in the same format with
seed -1 (unknown); the manifest names the folder, its sha256 and every face's file.

Output folder (written atomically as a whole):
  synthetic.safetensors   images uint8 N x 1 x 48 x 48, labels int64 N, seeds int64 N (and, for
                          edits, sources int64 N)
  manifest.json           generator kind, path and sha256, policy, per-class counts, seed rule and
                          range, truncation / guidance scale
  png/<expression>/<i>.png              (export_png) one grayscale PNG per image
  synthetic_fer2013.csv                 (export_csv) FER2013 layout: emotion,pixels,Usage=Training
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import save

from facedata.prepared import check_images
from facedata.sources.image_folder import read_labelled_folder
from facedata.synthetic import CSV_FILE, DATA_FILE, export_csv, export_png
from generators.config import GenerateConfig
from generators.registry import KINDS, load_sampler
from generators.sampling import file_sha256, generator_sha256
from runtime import atomic
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS

SEED_STRIDE = 10_000_000  # images per generate seed: image i gets seed * SEED_STRIDE + i

def _as_list(real_train_counts: Sequence[int] | Mapping[str, int]) -> list[int]:
    """7 counts in FER2013 order, from a list or a {expression: count} mapping (a prepared manifest's)."""
    if isinstance(real_train_counts, Mapping):
        return [int(real_train_counts.get(name, 0)) for name in EXPRESSIONS]
    real = [int(c) for c in real_train_counts]
    if len(real) != len(EXPRESSIONS):
        raise ValueError(f"real_train_counts needs {len(EXPRESSIONS)} counts, got {len(real)}")
    return real


def class_counts(cfg: GenerateConfig, real_train_counts: Sequence[int] | Mapping[str, int]) -> list[int]:
    """Images to generate per expression (FER2013 order) under the configured policy."""
    real = _as_list(real_train_counts)
    if cfg.policy == "per_class":
        counts = [int(cfg.per_class)] * len(EXPRESSIONS)
    elif cfg.policy == "balance":
        counts = [max(real) - c for c in real]
    else:
        counts = list(cfg.counts)
    if sum(counts) >= SEED_STRIDE:
        raise UserError(f"generate: {sum(counts)} images asked for; at most {SEED_STRIDE - 1} per run (seed range)")
    return counts


def seeds_for(cfg: GenerateConfig, n: int) -> torch.Tensor:
    return cfg.seed * SEED_STRIDE + torch.arange(n, dtype=torch.int64)


def edit_sources(cfg: GenerateConfig, labels: torch.Tensor, real_labels: torch.Tensor) -> torch.Tensor:
    """For each image (target labels[i]), the index of the real train face it edits: per target class, a
    seeded permutation of the allowed real faces (edit_from, never the target's own class), cycled."""
    g = torch.Generator().manual_seed(cfg.seed)
    allowed = [EXPRESSIONS.index(e) for e in cfg.edit_from] if cfg.edit_from else list(range(len(EXPRESSIONS)))
    sources = torch.empty(len(labels), dtype=torch.int64)
    for c in range(len(EXPRESSIONS)):
        rows = torch.nonzero(labels == c).flatten()
        if not len(rows):
            continue
        pool = torch.nonzero(torch.isin(real_labels, torch.tensor([k for k in allowed if k != c]))).flatten()
        if not len(pool):
            raise UserError(f"generate: no real train face to edit toward {EXPRESSIONS[c]} (generate.edit_from: "
                            f"{cfg.edit_from}); allow other expressions or set its count to 0")
        order = pool[torch.randperm(len(pool), generator=g)]
        sources[rows] = order.repeat(math.ceil(len(rows) / len(order)))[: len(rows)]
    return sources


def run_generate(gen_cfg: GenerateConfig, generator_path: Path, real_train_counts: Sequence[int] | Mapping[str, int],
                 out_dir: Path = Path("data/synthetic"), progress: bool = True, real_train=None) -> dict:
    """Draw the synthetic set and write it (and the exports) to out_dir atomically; returns the manifest.
    real_train: the prepared train split (LabelledImages), needed by `mode: edit`."""
    generator_path = Path(generator_path)
    sampler = load_sampler(generator_path)
    if gen_cfg.mode == "edit" and not hasattr(sampler, "edit"):
        raise UserError(f"generate.mode: edit needs a diffusion generator (generator.kind: diffusion); {generator_path} "
                        f"is a {sampler.kind}, which cannot start from a real face. Use mode: sample")
    counts = class_counts(gen_cfg, real_train_counts)
    labels = torch.repeat_interleave(torch.arange(len(EXPRESSIONS)), torch.tensor(counts, dtype=torch.int64))
    seeds = seeds_for(gen_cfg, len(labels))
    knob = KINDS[sampler.kind].sample_options(gen_cfg)  # truncation (GAN) or guidance_scale (diffusion)
    sources = edit_sources(gen_cfg, labels, real_train.labels) if gen_cfg.mode == "edit" else None

    images = torch.empty(len(labels), 1, 48, 48, dtype=torch.uint8)
    chunk = max(gen_cfg.batch_size, 1)
    bar = Progress(TextColumn("generate"), BarColumn(), TextColumn("{task.completed}/{task.total} images"),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress)
    with bar:
        task = bar.add_task("generate", total=len(labels))
        for start in range(0, len(labels), chunk):
            end = min(start + chunk, len(labels))
            if sources is None:
                images[start:end] = sampler.sample(labels[start:end], seeds[start:end], batch_size=chunk, **knob)
            else:
                images[start:end] = sampler.edit(real_train.images[sources[start:end]], labels[start:end],
                                                 seeds[start:end], gen_cfg.edit_strength, batch_size=chunk, **knob)
            bar.update(task, advance=end - start)
    check_images(images, labels)

    manifest = {
        "source": "model",
        "kind": sampler.kind,
        "generator": str(generator_path),
        "generator_sha256": generator_sha256(generator_path),
        "policy": gen_cfg.policy,
        "counts": dict(zip(EXPRESSIONS, counts)),
        "total": len(labels),
        "real_train_counts": dict(zip(EXPRESSIONS, _as_list(real_train_counts))),
        "seeds": {"rule": f"image i (file order) has z-seed {gen_cfg.seed} * {SEED_STRIDE} + i",
                  "first": int(seeds[0]) if len(seeds) else None, "last": int(seeds[-1]) if len(seeds) else None},
        **knob,
        "mode": gen_cfg.mode,
        **({"edit": {"strength": gen_cfg.edit_strength, "edit_from": gen_cfg.edit_from or "every expression but the target",
                     "sources": "index into the prepared train split (data/prepared/train.safetensors)"},
            "derived_from_real_faces": True} if sources is not None else {"derived_from_real_faces": False}),
        "config": gen_cfg.to_dict(),
        "files": [DATA_FILE] + (["png/"] if gen_cfg.export_png else []) + ([CSV_FILE] if gen_cfg.export_csv else []),
    }
    _write_set(out_dir, images, labels, seeds, sources, manifest, gen_cfg)
    return manifest


def folder_sha256(root: Path, files: Sequence[str]) -> str:
    """sha256 over the read files' relative names and bytes, in order: what the set was made from."""
    h = hashlib.sha256()
    for name in files:
        h.update(f"{name}\0{file_sha256(root / name)}\n".encode())
    return h.hexdigest()


def import_folder(folder: str | Path, class_map: dict[str, str], lenient: bool,
                  real_train_counts: Sequence[int] | Mapping[str, int], out_dir: Path = Path("data/synthetic"),
                  gen_cfg: GenerateConfig | None = None) -> dict:
    """`source: folder`: a synthetic set made elsewhere, read into the generate format."""
    folder = Path(folder)
    read = read_labelled_folder(folder, class_map, lenient, what="synthetic folder (generate.folder)")
    check_images(read.images, read.labels)
    counts = torch.bincount(read.labels, minlength=len(EXPRESSIONS)).tolist()
    manifest = {
        "source": "folder",
        "kind": "folder",
        "folder": str(folder),
        "folder_sha256": folder_sha256(folder, read.files),
        "counts": dict(zip(EXPRESSIONS, counts)),
        "total": len(read.labels),
        "real_train_counts": dict(zip(EXPRESSIONS, _as_list(real_train_counts))),
        "seeds": {"rule": "unknown (made outside fersynth): every seed is -1"},
        "skipped": {**dict(read.rejected), **{f"class {k}": v for k, v in read.dropped_classes.items()}},
        "derived_from_real_faces": None,  # unknown: say so in an export
        "mode": "folder",
        "file_names": read.files,
        "files": [DATA_FILE],
    }
    seeds = torch.full((len(read.labels),), -1, dtype=torch.int64)
    _write_set(out_dir, read.images, read.labels, seeds, None, manifest, gen_cfg)
    return manifest


def _write_set(out_dir: Path, images: torch.Tensor, labels: torch.Tensor, seeds: torch.Tensor,
               sources: torch.Tensor | None, manifest: dict, gen_cfg: GenerateConfig | None) -> None:
    with atomic.atomic_dir(out_dir) as tmp:
        extra = {"sources": sources.contiguous()} if sources is not None else {}
        (tmp / DATA_FILE).write_bytes(save({"images": images.contiguous(), "labels": labels.contiguous(),
                                            "seeds": seeds.contiguous(), **extra}))  # not save_file: it writes 0600
        if gen_cfg is not None and gen_cfg.export_png:
            export_png(images, labels, tmp / "png")
        if gen_cfg is not None and gen_cfg.export_csv:
            export_csv(images, labels, tmp / CSV_FILE)
        atomic.write_json(tmp / "manifest.json", manifest)


