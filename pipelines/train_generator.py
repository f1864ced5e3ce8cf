"""Stage `train_generator`: train the class-conditional generator of the configured kind (GAN or
diffusion, see `generators/registry.py`) on the prepared train split, which is already the
`data.real_fraction` subset the classifiers see.

Writes the generator folder `<out>/model` in its ecosystem's layout (generators/sampling.py: the GAN's
safetensors + fersynth.json, the diffusion model's diffusers `save_pretrained` folders), keeps resumable
state in `<out>/checkpoints/last.safetensors`, a sample grid PNG per reading in `<out>/samples/`
(one row per expression, upscaled 2x), dvclive metrics, and `metrics/generator.json` (final
GAN-test overall and per class, KID in the judge's feature space, steps, minutes, steps/s).

With `generate.source: folder` nothing is trained: the synthetic faces come from that folder, and the
stage only records so (`<out>/model/fersynth.json` of kind `none`), so `dvc repro` skips the training.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from rich.console import Console

from classifiers.judge import load_judge
from facedata.prepared import load_split
from figures.grids import save_grid
from generators.config import GeneratorConfig
from generators.registry import KINDS
from generators.sampling import write_metadata
from runtime import atomic
from runtime.device import hardware, is_main_process
from runtime.live import dvclive_logger


def record_no_generator(folder: str, out_dir: Path, metrics_path: Path, live_dir: Path | None = Path("dvclive/generator")) -> dict:
    """`generate.source: folder`: no generator; the stage's outputs say where the faces come from instead
    (the training curves of an earlier generator are removed: they no longer describe the faces)."""
    note = {"kind": "none", "reason": "generate.source is folder", "folder": folder}
    with atomic.atomic_dir(Path(out_dir) / "model") as tmp:
        write_metadata(tmp, note)
    if live_dir is not None:
        shutil.rmtree(live_dir, ignore_errors=True)
        (Path(live_dir) / "plots" / "metrics").mkdir(parents=True)  # a declared plots output: present, empty
    (Path(out_dir) / "samples").mkdir(parents=True, exist_ok=True)
    atomic.write_text(Path(out_dir) / "samples" / "README.txt", f"No generator was trained: the synthetic faces come from {folder}.\n")
    atomic.write_json(metrics_path, note)
    Console(stderr=True).print(f"train_generator: skipped, the synthetic faces come from {folder} (generate.source: folder)")
    return note


def run_train_generator(gen_cfg: GeneratorConfig, data_dir: Path, judge_path: Path | None,
                        out_dir: Path = Path("models/generator"), live_dir: Path | None = Path("dvclive/generator"),
                        metrics_path: Path = Path("metrics/generator.json"), progress: bool = True) -> dict:
    """Train (resuming from <out>/checkpoints), save the generator folder <out>/model, return (and write) the metrics."""
    console = Console(stderr=True)
    train = load_split(Path(data_dir) / "train.safetensors")
    judge = load_judge(judge_path)
    kind = KINDS[gen_cfg.kind]
    settings = kind.settings(gen_cfg)
    kind.check(settings, judge)
    out_dir = Path(out_dir)
    samples_dir = out_dir / "samples"
    live, log = dvclive_logger(live_dir)

    def on_samples(images_uint8: torch.Tensor, step: int) -> None:
        save_grid(images_uint8, samples_dir / f"step_{step:06d}.png")

    t0 = time.perf_counter()
    result = kind.train(train.images, train.labels, settings, judge=judge, checkpoint_dir=out_dir / "checkpoints", log=log,
                        on_samples=on_samples, progress=progress)
    wall = time.perf_counter() - t0
    if not is_main_process():
        return {}
    grids = sorted(samples_dir.glob("step_*.png"))
    if grids:  # the last grid under a fixed name, for README and `dvc plots`
        atomic.write_bytes(samples_dir / "final.png", grids[-1].read_bytes())

    quality = kind.final_quality(result, settings, judge, train) if judge is not None else {}
    kind.save(out_dir / "model", result, settings, {"steps": result.steps, "quality": quality})
    metrics = {
        "kind": gen_cfg.kind,
        **({"gan_test": quality["gan_test"], "kid": quality["kid"]} if quality else {}),
        "steps": result.steps,
        "train_minutes": round(result.seconds / 60, 2),
        "wall_minutes": round(wall / 60, 2),
        "steps_per_s": round(result.steps / max(1e-9, result.seconds), 3),
        "stopped": result.stopped,
        "n_train": len(train),
        "config": gen_cfg.to_dict()[gen_cfg.kind],
        "hardware": hardware(),
    }
    atomic.write_json(metrics_path, metrics)
    if live is not None:
        live.end()
    if quality:
        console.print(f"generator ({gen_cfg.kind}) after {result.steps} steps: GAN-test "
                      f"{quality['gan_test']['overall']:.3f}, KID {quality['kid']:.4f}; {metrics['train_minutes']} min")
    return metrics
