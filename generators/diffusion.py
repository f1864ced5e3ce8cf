"""Class-conditional diffusion generator: the comparison to the GAN, built on `diffusers`.

A `UNet2DModel` (48x48 grayscale, class embeddings for the 7 expressions plus a null class used
for classifier-free guidance) is trained as a DDPM (`DDPMScheduler` adds the noise) and sampled
with a fast deterministic solver (DDIM or DPM-Solver++). The training loop reads top to bottom:
class-balanced batches, random label dropout to the null class, min-SNR-weighted MSE, AdamW,
an EMA copy of the UNet (diffusers' `EMAModel`) that all sampling uses, safetensors checkpoints
that resume exactly, a NaN/inf guard, and a wall-clock budget.

Sampling is seeded per image: image i's initial noise (and any noise a scheduler step draws)
comes from `torch.Generator().manual_seed(seeds[i])`, so (checkpoint, label, seed) regenerates an
image whatever batch it was drawn in. `DiffusionSampler` has the same `kind`/`sample(labels,
seeds, ...)` shape as the GAN's sampler so `generate` and later stages work with either.
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
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from classifiers import checkpoint as ckpt
from classifiers.labels import EXPRESSIONS
from classifiers.training import resolve_device, resume_log
from generators.config import DiffusionConfig
from pipelines.errors import UserError

NUM_CLASSES = len(EXPRESSIONS)  # 7
NULL_CLASS = NUM_CLASSES  # class index 7 = "no label", for classifier-free guidance
IMAGE_SIZE = 48
# ---------------------------------------------------------------------------------------------
# Model and schedulers


def build_unet(cfg: DiffusionConfig) -> UNet2DModel:
    levels = len(cfg.block_out_channels)
    attn = [i >= levels - cfg.attention_levels for i in range(levels)]
    return UNet2DModel(
        sample_size=IMAGE_SIZE // cfg.patch_size,
        in_channels=cfg.patch_size**2,
        out_channels=cfg.patch_size**2,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        add_attention=cfg.mid_attention,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=NUM_CLASSES + 1,  # + the null class
    )


def training_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type, clip_sample=True)


def sampling_scheduler(cfg: DiffusionConfig, name: str | None = None):
    """A fresh deterministic fast solver (they are stateful: one per sampling run).

    "trailing" timestep spacing starts at the last training timestep, which few-step sampling
    needs (Lin et al. 2024)."""
    name = name or cfg.sample_scheduler
    common = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                  prediction_type=cfg.prediction_type, timestep_spacing="trailing")
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=True)
    # lambda_min_clipped: diffusers' recommended guard for the cosine schedule's last step;
    # thresholding at 1.0 clips each x0 estimate to the data range [-1, 1], as DDIM's clip_sample
    # does (pixel-space models; without it an early, poor x0 estimate saturates the image).
    clip = -5.1 if cfg.beta_schedule == "squaredcos_cap_v2" else -float("inf")
    return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                       lambda_min_clipped=clip, thresholding=True, sample_max_value=1.0)


def denoise(unet: UNet2DModel, x: torch.Tensor, t: torch.Tensor, classes: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The UNet's prediction for noisy images x (N x 1 x 48 x 48), in image layout."""
    if patch_size == 1:
        return unet(x, t, class_labels=classes).sample
    out = unet(F.pixel_unshuffle(x, patch_size), t, class_labels=classes).sample
    return F.pixel_shuffle(out, patch_size)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Sampling


class DiffusionSampler:
    """Draws uint8 faces from a trained (EMA) UNet with classifier-free guidance."""

    kind = "diffusion"

    def __init__(self, unet: UNet2DModel, cfg: DiffusionConfig) -> None:
        self.unet, self.cfg = unet.eval(), cfg

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, seeds: torch.Tensor, guidance_scale: float | None = None,
               num_inference_steps: int | None = None, batch_size: int = 256) -> torch.Tensor:
        """uint8 images N x 1 x 48 x 48 for `labels` (0..6), image i from `seeds[i]` alone."""
        labels, seeds = torch.as_tensor(labels).long().reshape(-1), torch.as_tensor(seeds).long().reshape(-1)
        if labels.shape != seeds.shape:
            raise ValueError(f"labels ({labels.numel()}) and seeds ({seeds.numel()}) must have the same length")
        if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}")
        scale = self.cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        if scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {scale}")
        steps = num_inference_steps or self.cfg.num_inference_steps
        out = torch.zeros(labels.numel(), 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
        for i in range(0, labels.numel(), batch_size):
            out[i : i + batch_size] = self._sample_batch(labels[i : i + batch_size], seeds[i : i + batch_size], scale, steps)
        return out

    def _sample_batch(self, labels: torch.Tensor, seeds: torch.Tensor, scale: float, steps: int) -> torch.Tensor:
        device = self.device
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        x = torch.cat([torch.randn(1, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g) for g in gens]).to(device)
        sched = sampling_scheduler(self.cfg)
        sched.set_timesteps(steps)
        x = x * sched.init_noise_sigma
        n = len(labels)
        if scale == 1:  # conditional only
            classes = labels
        elif scale == 0:  # unconditional only
            classes = torch.full_like(labels, NULL_CLASS)
        else:  # one forward of 2N: conditional and null class
            classes = torch.cat([labels, torch.full_like(labels, NULL_CLASS)])
        classes = classes.to(device)
        extra = {"eta": self.cfg.ddim_eta} if isinstance(sched, DDIMScheduler) else {}
        for t in sched.timesteps:
            xin = sched.scale_model_input(torch.cat([x, x]) if len(classes) > n else x, t)
            pred = self._unet_rows(xin, t, classes)
            if len(classes) > n:
                cond, uncond = pred.chunk(2)
                pred = uncond + scale * (cond - uncond)
            x = sched.step(pred, t, x, generator=gens, **extra).prev_sample
        return to_uint8(x).cpu()

    def _unet_rows(self, x: torch.Tensor, t: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The UNet on fixed-shape chunks of `sample_unet_batch` rows (the last padded with zeros):
        each row's result then does not depend on which other rows share its batch."""
        m = self.cfg.sample_unet_batch
        out = []
        for i in range(0, len(x), m):
            xc, cc = x[i : i + m], classes[i : i + m]
            k = len(xc)
            if k < m:
                xc = torch.cat([xc, xc.new_zeros(m - k, *xc.shape[1:])])
                cc = torch.cat([cc, cc.new_full((m - k,), NULL_CLASS)])
            out.append(denoise(self.unet, xc, t, cc, self.cfg.patch_size)[:k].float())
        return torch.cat(out)


def save_diffusion_sampler(path: str | Path, ema_unet: UNet2DModel, cfg: DiffusionConfig) -> None:
    """Weights of the (EMA) UNet + what is needed to rebuild and sample it, atomically."""
    unet_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(ema_unet.config).items()
                   if not k.startswith("_")}  # diffusers' private bookkeeping keys
    meta = {"kind": "diffusion", "config": cfg.model_dump(mode="json"), "unet_config": unet_config}
    ckpt.save_checkpoint(path, dict(ema_unet.state_dict()), meta)


def load_diffusion_sampler(path: str | Path, device: str | torch.device = "cpu") -> DiffusionSampler:
    try:
        tensors, meta = ckpt.load_checkpoint(path)
    except ValueError as e:
        raise UserError(f"{e}; expected a diffusion generator written by train-gan with generator.kind: diffusion") from None
    if meta.get("kind") != "diffusion":
        raise UserError(f"{path}: a generator of kind {meta.get('kind')!r}, not a diffusion generator")
    cfg = DiffusionConfig(**meta["config"])
    unet = UNet2DModel.from_config(meta["unet_config"])
    unet.load_state_dict(tensors)
    return DiffusionSampler(unet.to(device).eval(), cfg)


# ---------------------------------------------------------------------------------------------
# Training


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


def gan_test(judge, images_uint8: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The judge's agreement with the conditioning label, overall and per expression."""
    hit = (judge.probabilities(images_uint8).argmax(1) == labels).float()
    row = {"gan_test": float(hit.mean())}
    for c, name in enumerate(EXPRESSIONS):
        if (labels == c).any():
            row[f"gan_test_{name}"] = float(hit[labels == c].mean())
    return row


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
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg).to(device)
    ema_unet = copy.deepcopy(unet).eval().requires_grad_(False)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=cfg.ema_power, foreach=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    noise_sched = training_scheduler(cfg)
    alphas_cumprod = noise_sched.alphas_cumprod.to(device)
    names = [n for n, _ in unet.named_parameters()]

    n = len(labels)
    counts = torch.bincount(labels, minlength=NUM_CLASSES).double()
    sample_p = (1.0 / counts.clamp(min=1))[labels] if cfg.balanced_sampling else torch.ones(n, dtype=torch.float64)
    gen = torch.Generator().manual_seed(cfg.seed * 1009 + 29)  # batches, flips, dropout, noise, timesteps

    step, elapsed, history = 0, 0.0, []
    loss_sum, loss_n = 0.0, 0
    fingerprint = {"config": cfg.fingerprint(), "n_train": n,
                   "train_sha256": ckpt.data_digest(images_uint8, labels)}
    last_path = Path(checkpoint_dir) / "last.safetensors" if checkpoint_dir else None
    if last_path and last_path.exists():
        tensors, meta = ckpt.load_checkpoint(last_path)
        if meta.get("fingerprint") == fingerprint:
            unet.load_state_dict(ckpt.unprefixed("model", tensors))
            shadow = ckpt.unprefixed("ema", tensors)
            ema.shadow_params = [shadow[k].to(device) for k in names]
            ema.optimization_step = meta["ema_step"]
            ckpt.load_optimizer_state(opt, ckpt.unprefixed("optim", tensors), meta["optim"])
            gen.set_state(tensors["rng.gen"])
            torch.set_rng_state(tensors["rng.torch"])
            step, elapsed, history = meta["step"], meta["elapsed"], meta["history"]
            loss_sum, loss_n = meta["loss_sum"], meta["loss_n"]
            if progress:
                print(f"resuming diffusion training from {last_path} at step {step}/{cfg.steps}", flush=True)
            resume_log(log, step)
        elif progress:
            print(f"{last_path} was made with other settings or data; starting afresh", flush=True)

    def save(at_step: int) -> None:
        if last_path is None:
            return
        opt_tensors, opt_meta = ckpt.optimizer_state(opt)
        tensors = {**ckpt.prefixed("model", unet.state_dict()),
                   **{f"ema.{k}": p for k, p in zip(names, ema.shadow_params)},
                   **ckpt.prefixed("optim", opt_tensors), "rng.gen": gen.get_state(), "rng.torch": torch.get_rng_state()}
        meta = {"kind": "diffusion_training", "fingerprint": fingerprint, "step": at_step, "elapsed": elapsed_now(),
                "history": history, "optim": opt_meta, "ema_step": ema.optimization_step,
                "loss_sum": loss_sum, "loss_n": loss_n}
        ckpt.save_checkpoint(last_path, tensors, meta)

    def ema_sampler() -> DiffusionSampler:
        ema.copy_to(ema_unet.parameters())
        return DiffusionSampler(ema_unet, cfg)

    def readings(at_step: int, row: dict, force: bool) -> None:
        if on_samples is not None and (force or at_step % cfg.sample_every == 0):
            on_samples(ema_sampler().sample(*grid_inputs(cfg.grid_per_class)), at_step)
        if judge is not None and (force or at_step % cfg.quality_every == 0):
            q_labels, q_seeds = quality_inputs(cfg.quality_per_class)
            images = ema_sampler().sample(q_labels, q_seeds, num_inference_steps=cfg.quality_inference_steps)
            row.update({k: round(v, 5) for k, v in gan_test(judge, images, q_labels).items()})

    t_start = time.perf_counter()
    start_elapsed = elapsed

    def elapsed_now() -> float:
        return start_elapsed + time.perf_counter() - t_start

    stopped = "completed"
    amp = device.type == "cuda" and cfg.amp
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress, transient=False)
    with bar:
        task = bar.add_task("diffusion", total=cfg.steps, completed=min(step, cfg.steps))
        train_seconds, last_log_step = 0.0, step  # time in training steps alone, since the last log row
        row: dict = {}  # the row of the last step, which the end completes
        while step < cfg.steps:
            row = {}
            if cfg.max_minutes is not None and elapsed_now() >= 60 * cfg.max_minutes:
                stopped = f"time budget of {cfg.max_minutes} min reached at step {step}"
                break
            t_step = time.perf_counter()
            unet.train()
            for g in opt.param_groups:
                g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else cfg.lr

            idx = torch.multinomial(sample_p, cfg.batch_size, replacement=True, generator=gen)
            x0 = images_uint8[idx].float() / 127.5 - 1
            if cfg.hflip:
                flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
                x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            y = labels[idx].clone()
            y[torch.rand(cfg.batch_size, generator=gen) < cfg.p_uncond] = NULL_CLASS
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=gen)
            x0, y, noise, t = x0.to(device), y.to(device), noise.to(device), t.to(device)

            xt = noise_sched.add_noise(x0, noise, t)
            target = noise if cfg.prediction_type == "epsilon" else noise_sched.get_velocity(x0, noise, t)
            snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                pred = denoise(unet, xt, t, y, cfg.patch_size)
            loss = diffusion_loss(pred, target, snr, cfg)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(_diverged(step + 1, f"loss {loss_value}", last_path))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip or float("inf"))
            if not math.isfinite(float(grad_norm)):
                raise FloatingPointError(_diverged(step + 1, f"gradient norm {float(grad_norm)}", last_path))
            opt.step()
            ema.step(unet.parameters())
            step += 1
            loss_sum, loss_n = loss_sum + loss_value, loss_n + 1
            train_seconds += time.perf_counter() - t_step
            bar.update(task, advance=1)

            if step % cfg.log_every == 0:
                row = {"step": step, "loss": round(loss_sum / loss_n, 5), "lr": opt.param_groups[0]["lr"],
                       "ema_decay": round(ema.cur_decay_value or 0.0, 6),
                       "seconds_per_step": round(train_seconds / max(1, step - last_log_step), 4),
                       "elapsed_minutes": round(elapsed_now() / 60, 3)}
                loss_sum, loss_n, train_seconds, last_log_step = 0.0, 0, 0.0, step
                bar.update(task, description=f"diffusion loss {row['loss']:.4f}")
            if step == cfg.steps:
                break  # the end below checkpoints, samples and logs the last step
            readings(step, row, force=False)
            if row:
                row = {"step": step, **row}
                history.append(row)
            if row and log is not None:  # before the checkpoint: a resumed run never misses a row
                log(row, step)
            if step % cfg.checkpoint_every == 0:
                save(step)

        # End: final readings (also when a finished run is started again), then a checkpoint.
        row = {"step": step, **row, "elapsed_minutes": round(elapsed_now() / 60, 3)}
        if loss_n:
            row["loss"] = round(loss_sum / loss_n, 5)
            loss_sum, loss_n = 0.0, 0
        readings(step, row, force=True)
        if not history or history[-1].get("step") != step:
            history.append(row)
        else:
            history[-1] = {**history[-1], **row}
        if log is not None:
            log(row, step)
        save(step)
    ema.copy_to(ema_unet.parameters())
    return DiffusionResult(ema_unet.cpu().eval(), history, step, elapsed_now(), stopped)


def _diverged(step: int, what: str, last_path: Path | None) -> str:
    kept = f"the last good checkpoint {last_path} is kept" if last_path and last_path.exists() else "no checkpoint was written"
    return (f"diffusion training diverged at step {step} ({what}); {kept}. "
            "Lower lr, keep grad_clip on, or delete the checkpoint to restart")
