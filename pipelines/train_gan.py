"""Stage `train_gan`: train the class-conditional generator (GAN or diffusion) on the prepared train
split, which is already the `data.real_fraction` subset the classifiers see.

Writes `<out>/generator.safetensors` (EMA weights + kind, config, label names), keeps resumable
state in `<out>/checkpoints/last.safetensors`, a sample grid PNG per reading in `<out>/samples/`
(one row per expression, upscaled 2x), dvclive metrics, and `metrics/generator.json` (final
GAN-test overall and per class, KID in the judge's feature space, steps, minutes, steps/s).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torchvision
from rich.console import Console

from classifiers.judge import Judge
from pipelines.live import dvclive_logger
from classifiers.labels import EXPRESSIONS
from classifiers.training import is_main_process
from generators.config import GeneratorConfig
from generators.quality import QualityProbe
from pipelines import atomic
from pipelines.errors import UserError
from pipelines.prepared_data import load_split
from pipelines.train_classifier import hardware

GRID_UPSCALE = 2


def load_judge(path: Path | None) -> Judge | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: judge not found; run `fersynth train-judge` (dvc repro train_judge) first")
    try:
        return Judge.load(path)
    except (ValueError, KeyError) as e:
        raise UserError(f"{path}: not a readable judge ({e}); rerun `fersynth train-judge`") from None


def save_grid(images_uint8: torch.Tensor, path: Path) -> None:
    """Row-major grid images (7 rows, one per expression) -> an upscaled PNG, atomically."""
    per_row = max(1, len(images_uint8) // len(EXPRESSIONS))
    grid = torchvision.utils.make_grid(images_uint8.float() / 255, nrow=per_row, padding=2, pad_value=1.0)[:1]
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=GRID_UPSCALE, mode="nearest")[0]
    with atomic.atomic_path(path) as tmp:
        torchvision.utils.save_image(grid, tmp, format="PNG")


def _train(gen_cfg: GeneratorConfig, images: torch.Tensor, labels: torch.Tensor, judge: Judge | None,
           checkpoint_dir: Path, log, on_samples, progress: bool):
    kwargs = dict(judge=judge, checkpoint_dir=checkpoint_dir, log=log, on_samples=on_samples, progress=progress)
    if gen_cfg.kind == "gan":
        from generators.gan_training import GanDivergedError, train_gan

        try:
            return train_gan(images, labels, gen_cfg.gan, **kwargs)
        except GanDivergedError as e:
            raise UserError(str(e)) from None
    from generators.diffusion import train_diffusion

    try:
        return train_diffusion(images, labels, gen_cfg.diffusion, **kwargs)
    except FloatingPointError as e:
        raise UserError(str(e)) from None


def _save(gen_cfg: GeneratorConfig, result, path: Path, extra: dict) -> None:
    if gen_cfg.kind == "gan":
        from generators.sampling import save_generator

        save_generator(path, result.generator, gen_cfg.gan, **extra)
    else:
        from generators.diffusion import save_diffusion_sampler

        save_diffusion_sampler(path, result.ema_model, gen_cfg.diffusion)


def run_train_gan(gen_cfg: GeneratorConfig, data_dir: Path, judge_path: Path | None,
                  out_dir: Path = Path("models/generator"), live_dir: Path | None = Path("dvclive/generator"),
                  metrics_path: Path = Path("metrics/generator.json"), progress: bool = True) -> dict:
    """Train (resuming from <out>/checkpoints), save the generator, return (and write) the metrics."""
    console = Console(stderr=True)
    train = load_split(Path(data_dir) / "train.safetensors")
    judge = load_judge(judge_path)
    if judge is None and gen_cfg.kind == "gan" and (gen_cfg.gan.d_kind == "projected" or gen_cfg.gan.judge_guidance > 0):
        raise UserError("generator.gan.d_kind 'projected' and judge_guidance > 0 need the judge; pass its path "
                        "(models/judge/model.safetensors) or set d_kind: plain and judge_guidance: 0")
    out_dir = Path(out_dir)
    samples_dir = out_dir / "samples"
    live, log = dvclive_logger(live_dir)

    def on_samples(images_uint8: torch.Tensor, step: int) -> None:
        save_grid(images_uint8, samples_dir / f"step_{step:06d}.png")

    t0 = time.perf_counter()
    result = _train(gen_cfg, train.images, train.labels, judge, out_dir / "checkpoints", log, on_samples, progress)
    wall = time.perf_counter() - t0
    if not is_main_process():
        return {}
    grids = sorted(samples_dir.glob("step_*.png"))
    if grids:  # the last grid under a fixed name, for README and `dvc plots`
        atomic.write_bytes(samples_dir / "final.png", grids[-1].read_bytes())

    quality = _final_quality(gen_cfg, result, judge, train)
    _save(gen_cfg, result, out_dir / "generator.safetensors", {"steps": result.steps, "quality": quality})
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


def _final_quality(gen_cfg: GeneratorConfig, result, judge: Judge | None, train) -> dict:
    """GAN-test and KID of the final generator, on the same kind of fixed batch for both kinds."""
    if judge is None:
        return {}
    if gen_cfg.kind == "gan":
        if result.quality and result.quality.get("step") == result.steps:
            return {k: v for k, v in result.quality.items() if k != "step"}
        from generators.sampling import sample

        probe = QualityProbe(judge, train.images, train.labels, gen_cfg.gan.quality_samples, gen_cfg.gan.seed)
        return probe(lambda y, seeds: sample(result.generator, y, seeds))
    from generators.diffusion import DiffusionSampler

    cfg = gen_cfg.diffusion
    sampler = DiffusionSampler(result.ema_model, cfg)
    probe = QualityProbe(judge, train.images, train.labels, cfg.quality_per_class * len(EXPRESSIONS), cfg.seed)
    return probe(lambda y, seeds: sampler.sample(y, seeds))
