"""Training the class-conditional diffusion generator (the comparison to the GAN, built on `diffusers`).

The loop reads top to bottom: class-balanced batches, random label dropout to the null class,
min-SNR-weighted MSE, AdamW, an EMA copy of the UNet (diffusers' `EMAModel`) that all sampling
uses, safetensors checkpoints that resume exactly, a NaN/inf guard, and a wall-clock budget.
The network and schedulers are in `diffusion_model.py`, sampling and the checkpoint file in
`diffusion_sampling.py`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel

from generators.config import DiffusionConfig
from generators.diffusion_model import IMAGE_SIZE, NULL_CLASS, NUM_CLASSES, build_unet, denoise, training_scheduler
from generators.diffusion_sampling import DiffusionSampler
from quality.probe import gan_test
from runtime import checkpoint as ckpt
from runtime.device import resolve_device
from runtime.resumable import ResumableRun, progress_bar, run_fingerprint


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@dataclass
class DiffusionResult:
    ema_model: UNet2DModel  # EMA weights, eval mode, on CPU: what sampling uses
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped: str = "completed"


def grid_inputs(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample-grid labels and seeds: row r = expression r, column j = seed j in every row."""
    return torch.arange(NUM_CLASSES).repeat_interleave(per_class), torch.arange(per_class).repeat(NUM_CLASSES)


def quality_inputs(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(NUM_CLASSES).repeat_interleave(per_class), 1_000_000 + torch.arange(NUM_CLASSES * per_class)


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, snr: torch.Tensor, cfg: DiffusionConfig) -> torch.Tensor:
    """MSE, optionally min-SNR-gamma weighted per sample (weights <= 1: the easy low-noise
    timesteps stop dominating the gradient, which speeds convergence)."""
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if cfg.snr_gamma is None:
        return per_sample.mean()
    if cfg.prediction_type == "epsilon":
        w = (cfg.snr_gamma / snr.clamp(min=1e-12)).clamp(max=1.0)  # min(snr, g) / snr, safe at snr = 0
    else:
        w = snr.clamp(max=cfg.snr_gamma) / (snr + 1)
    return (per_sample * w).mean()


def _check_data(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must be uint8 N x 1 x {IMAGE_SIZE} x {IMAGE_SIZE}, got {images.dtype} {tuple(images.shape)}")
    if labels.shape != (len(images),) or len(images) == 0:
        raise ValueError(f"labels must be N = {len(images)} > 0 class indices, got shape {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}")


@dataclass
class _Model:
    """What a diffusion checkpoint holds: the UNet, its EMA (diffusers' `EMAModel`), AdamW, and the
    generator every draw of the loop comes from (batches, flips, label dropout, noise, timesteps)."""

    unet: UNet2DModel
    ema_unet: UNet2DModel  # the EMA weights are copied in for sampling
    ema: EMAModel
    opt: torch.optim.Optimizer
    gen: torch.Generator

    @classmethod
    def build(cls, cfg: DiffusionConfig, device: torch.device) -> "_Model":
        torch.manual_seed(cfg.seed)
        unet = build_unet(cfg).to(device)
        ema_unet = copy.deepcopy(unet).eval().requires_grad_(False)
        ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=cfg.ema_power, foreach=True)
        opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return cls(unet, ema_unet, ema, opt, torch.Generator().manual_seed(cfg.seed * 1009 + 29))

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.unet.named_parameters()]

    def checkpoint(self) -> tuple[dict, dict]:
        opt_tensors, opt_meta = ckpt.optimizer_state(self.opt)
        tensors = {**ckpt.prefixed("model", self.unet.state_dict()),
                   **{f"ema.{k}": p for k, p in zip(self.names, self.ema.shadow_params)},
                   **ckpt.prefixed("optim", opt_tensors), "rng.gen": self.gen.get_state(),
                   "rng.torch": torch.get_rng_state()}
        return tensors, {"kind": "diffusion_training", "optim": opt_meta, "ema_step": self.ema.optimization_step}

    def restore(self, tensors: dict, meta: dict) -> tuple[int, list[dict], float, int]:
        """Loads the state; returns (step, history, loss sum and count since the last log row)."""
        device = next(self.unet.parameters()).device
        self.unet.load_state_dict(ckpt.unprefixed("model", tensors))
        shadow = ckpt.unprefixed("ema", tensors)
        self.ema.shadow_params = [shadow[k].to(device) for k in self.names]
        self.ema.optimization_step = meta["ema_step"]
        ckpt.load_optimizer_state(self.opt, ckpt.unprefixed("optim", tensors), meta["optim"])
        self.gen.set_state(tensors["rng.gen"])
        torch.set_rng_state(tensors["rng.torch"])
        return meta["step"], meta["history"], meta["loss_sum"], meta["loss_n"]

    def sampler(self, cfg: DiffusionConfig) -> DiffusionSampler:
        self.ema.copy_to(self.ema_unet.parameters())
        return DiffusionSampler(self.ema_unet, cfg)


def _batch(cfg: DiffusionConfig, images_uint8, labels, sample_p, gen: torch.Generator, device):
    """(x0, label with dropout to the null class, noise, timestep) of one class-balanced batch."""
    idx = torch.multinomial(sample_p, cfg.batch_size, replacement=True, generator=gen)
    x0 = images_uint8[idx].float() / 127.5 - 1
    if cfg.hflip:
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    y = labels[idx].clone()
    y[torch.rand(cfg.batch_size, generator=gen) < cfg.p_uncond] = NULL_CLASS
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=gen)
    return x0.to(device), y.to(device), noise.to(device), t.to(device)


def _train_step(m: _Model, cfg: DiffusionConfig, batch, noise_sched, alphas_cumprod, amp: bool, step: int,
                path: Path | None) -> float:
    """One AdamW step on the min-SNR-weighted denoising loss, then the EMA; returns the loss."""
    for g in m.opt.param_groups:
        g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else cfg.lr
    x0, y, noise, t = batch
    xt = noise_sched.add_noise(x0, noise, t)
    target = noise if cfg.prediction_type == "epsilon" else noise_sched.get_velocity(x0, noise, t)
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=amp):
        pred = denoise(m.unet, xt, t, y, cfg.patch_size)
    loss = diffusion_loss(pred, target, snr, cfg)
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        raise FloatingPointError(_diverged(step + 1, f"loss {loss_value}", path))
    m.opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(m.unet.parameters(), cfg.grad_clip or float("inf"))
    if not math.isfinite(float(grad_norm)):
        raise FloatingPointError(_diverged(step + 1, f"gradient norm {float(grad_norm)}", path))
    m.opt.step()
    m.ema.step(m.unet.parameters())
    return loss_value


def _readings(m: _Model, cfg: DiffusionConfig, judge, on_samples, step: int, row: dict, force: bool) -> None:
    """The sample grid (to on_samples) and GAN-test (into row) of the EMA model, when due or forced."""
    if on_samples is not None and (force or step % cfg.sample_every == 0):
        on_samples(m.sampler(cfg).sample(*grid_inputs(cfg.grid_per_class)), step)
    if judge is not None and (force or step % cfg.quality_every == 0):
        q_labels, q_seeds = quality_inputs(cfg.quality_per_class)
        images = m.sampler(cfg).sample(q_labels, q_seeds, num_inference_steps=cfg.quality_inference_steps)
        reading = gan_test(judge.probabilities(images), q_labels)
        row.update({"gan_test": reading["overall"], **{f"gan_test_{k}": v for k, v in reading["per_class"].items()}})


def train_diffusion(
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    cfg: DiffusionConfig,
    *,
    judge=None,
    checkpoint_dir: Path | None = None,
    log: Callable[[dict, int], None] | None = None,
    on_samples: Callable[[torch.Tensor, int], None] | None = None,
    progress: bool = True,
) -> DiffusionResult:
    labels = labels.long()
    _check_data(images_uint8, labels)
    device = resolve_device(cfg.device)
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    m = _Model.build(cfg, device)
    noise_sched = training_scheduler(cfg)
    alphas_cumprod = noise_sched.alphas_cumprod.to(device)
    counts = torch.bincount(labels, minlength=NUM_CLASSES).double().clamp(min=1)
    sample_p = (1.0 / counts)[labels] if cfg.balanced_sampling else torch.ones(len(labels), dtype=torch.float64)

    run = ResumableRun("diffusion training", checkpoint_dir, run_fingerprint(cfg, images_uint8, labels),
                       max_minutes=cfg.max_minutes, log=log)
    step, history, loss_sum, loss_n = 0, [], 0.0, 0
    if (restored := run.restore()) is not None:
        step, history, loss_sum, loss_n = m.restore(*restored)
        run.resumed(f"step {step}/{cfg.steps}", log_step=step)

    def save(at_step: int) -> None:
        tensors, meta = m.checkpoint()
        run.save(tensors, {**meta, "step": at_step, "history": history, "loss_sum": loss_sum, "loss_n": loss_n})

    run.begin()
    stopped = "completed"
    amp = device.type == "cuda" and cfg.amp
    with progress_bar(progress) as bar:
        task = bar.add_task("diffusion", total=cfg.steps, completed=min(step, cfg.steps))
        train_seconds, last_log_step = 0.0, step  # time in training steps alone, since the last log row
        row: dict = {}  # the row of the last step, which the end completes
        while step < cfg.steps:
            row = {}
            if run.budget_used() >= 1:
                stopped = f"time budget of {cfg.max_minutes} min reached at step {step}"
                break
            t_step = time.perf_counter()
            m.unet.train()
            batch = _batch(cfg, images_uint8, labels, sample_p, m.gen, device)
            loss_value = _train_step(m, cfg, batch, noise_sched, alphas_cumprod, amp, step, run.path)
            step, loss_sum, loss_n = step + 1, loss_sum + loss_value, loss_n + 1
            train_seconds += time.perf_counter() - t_step
            bar.update(task, advance=1)
            if step % cfg.log_every == 0:
                row = {"step": step, "loss": round(loss_sum / loss_n, 5), "lr": m.opt.param_groups[0]["lr"],
                       "ema_decay": round(m.ema.cur_decay_value or 0.0, 6),
                       "seconds_per_step": round(train_seconds / max(1, step - last_log_step), 4),
                       "elapsed_minutes": round(run.elapsed() / 60, 3)}
                loss_sum, loss_n, train_seconds, last_log_step = 0.0, 0, 0.0, step
                bar.update(task, description=f"diffusion loss {row['loss']:.4f}")
            if step == cfg.steps:
                break  # the end below checkpoints, samples and logs the last step
            _readings(m, cfg, judge, on_samples, step, row, force=False)
            if row:
                row = {"step": step, **row}
                history.append(row)
            if row and log is not None:  # before the checkpoint: a resumed run never misses a row
                log(row, step)
            if step % cfg.checkpoint_every == 0:
                save(step)

        # End: final readings (also when a finished run is started again), then a checkpoint.
        row = {"step": step, **row, "elapsed_minutes": round(run.elapsed() / 60, 3)}
        if loss_n:
            row["loss"] = round(loss_sum / loss_n, 5)
            loss_sum, loss_n = 0.0, 0
        _readings(m, cfg, judge, on_samples, step, row, force=True)
        if history and history[-1].get("step") == step:
            history[-1] = {**history[-1], **row}
        else:
            history.append(row)
        if log is not None:
            log(row, step)
        save(step)
    m.ema.copy_to(m.ema_unet.parameters())
    return DiffusionResult(m.ema_unet.cpu().eval(), history, step, run.elapsed(), stopped)


def _diverged(step: int, what: str, last_path: Path | None) -> str:
    kept = f"the last good checkpoint {last_path} is kept" if last_path and last_path.exists() else "no checkpoint was written"
    return (f"diffusion training diverged at step {step} ({what}); {kept}. "
            "Lower lr, keep grad_clip on, or delete the checkpoint to restart")
