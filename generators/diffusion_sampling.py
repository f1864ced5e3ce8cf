"""Sampling the diffusion generator, seeded per image, and its folder.

Image i's initial noise (and any noise a scheduler step draws) comes from
`torch.Generator().manual_seed(seeds[i])`, so (checkpoint, label, seed) regenerates an image whatever
batch it was drawn in. The generator folder is diffusers' own layout (`save_diffusion_sampler`).
`DiffusionSampler` has the same `kind`/`sample(labels, seeds, ...)` shape as
the GAN's sampler, so `generate` and later stages work with either."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DModel

from generators.config import DiffusionConfig
from generators.diffusion_model import IMAGE_SIZE, NULL_CLASS, NUM_CLASSES, denoise, sampling_scheduler
from generators.sampling import read_metadata, to_generator_range, to_uint8, write_metadata
from runtime import atomic
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS


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

    @torch.no_grad()
    def edit(self, sources_uint8: torch.Tensor, labels: torch.Tensor, seeds: torch.Tensor, strength: float,
             guidance_scale: float | None = None, num_inference_steps: int | None = None,
             batch_size: int = 256) -> torch.Tensor:
        """SDEdit (Meng et al. ICLR 2022): real face i is noised to the level `strength` of the way through
        the schedule (0: untouched, 1: pure noise) with noise from seeds[i], then denoised toward the
        expression labels[i] with classifier-free guidance. (source, label, seed, strength) regenerates it."""
        labels, seeds = torch.as_tensor(labels).long().reshape(-1), torch.as_tensor(seeds).long().reshape(-1)
        if not (labels.shape == seeds.shape and len(sources_uint8) == len(labels)):
            raise ValueError("sources, labels and seeds must have the same length")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        scale = self.cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        steps = num_inference_steps or self.cfg.num_inference_steps
        out = torch.zeros(labels.numel(), 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
        for i in range(0, labels.numel(), batch_size):
            rows = slice(i, i + batch_size)
            out[rows] = self._sample_batch(labels[rows], seeds[rows], scale, steps, sources_uint8[rows], strength)
        return out

    def _sample_batch(self, labels: torch.Tensor, seeds: torch.Tensor, scale: float, steps: int,
                      sources: torch.Tensor | None = None, strength: float = 1.0) -> torch.Tensor:
        """From pure noise, or (sources) from real faces noised to `strength` of the schedule."""
        device = self.device
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        x = torch.cat([torch.randn(1, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g) for g in gens]).to(device)
        sched = sampling_scheduler(self.cfg)
        sched.set_timesteps(steps)
        timesteps = sched.timesteps
        if sources is None:
            x = x * sched.init_noise_sigma
        else:  # diffusers' img2img recipe: skip the first steps, noise the image to the first one kept
            start = steps - max(1, round(steps * strength))
            timesteps = timesteps[start:]
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(start)
            x = sched.add_noise(to_generator_range(sources).to(device), x, timesteps[:1].repeat(len(x)))
        n = len(labels)
        if scale == 1:  # conditional only
            classes = labels
        elif scale == 0:  # unconditional only
            classes = torch.full_like(labels, NULL_CLASS)
        else:  # one forward of 2N: conditional and null class
            classes = torch.cat([labels, torch.full_like(labels, NULL_CLASS)])
        classes = classes.to(device)
        extra = {"eta": self.cfg.ddim_eta} if isinstance(sched, DDIMScheduler) else {}
        for t in timesteps:
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


def save_diffusion_sampler(folder: str | Path, ema_unet: UNet2DModel, cfg: DiffusionConfig, **extra) -> None:
    """The (EMA) UNet and its sampling scheduler in diffusers' own layout, so a diffusers user loads
    them without fersynth (`UNet2DModel.from_pretrained(folder, subfolder="unet")`,
    `DPMSolverMultistepScheduler.from_pretrained(folder, subfolder="scheduler")`), plus `fersynth.json`:
    the sampling config and how the UNet's inputs are laid out. The folder is written atomically."""
    meta = {"kind": "diffusion", "config": cfg.to_dict(), "label_names": list(EXPRESSIONS),
            "class_labels": {"expressions": "0..6 in label_names order", "null_class": NULL_CLASS},
            "pixels": f"1 x {IMAGE_SIZE} x {IMAGE_SIZE} in [-1, 1]; the UNet sees F.pixel_unshuffle(x, {cfg.patch_size})",
            **extra}
    with atomic.atomic_dir(folder) as tmp:
        ema_unet.save_pretrained(tmp / "unet", safe_serialization=True)
        sampling_scheduler(cfg).save_pretrained(tmp / "scheduler")
        write_metadata(tmp, meta)
        # diffusers writes its weights through safetensors' save_file, which creates them 0600; let
        # the umask decide, as for every other output
        mask = os.umask(0)
        os.umask(mask)
        for path in tmp.rglob("*"):
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def load_diffusion_sampler(folder: str | Path, device: str | torch.device = "cpu") -> DiffusionSampler:
    meta = read_metadata(folder)
    if meta.get("kind") != "diffusion":
        raise UserError(f"{folder}: a generator of kind {meta.get('kind')!r}, not a diffusion generator")
    try:
        unet = UNet2DModel.from_pretrained(Path(folder) / "unet")
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}/unet: not a readable diffusers UNet ({str(e).splitlines()[0][:200]}); "
                        "rerun `fersynth train-generator`") from None
    return DiffusionSampler(unet.to(device).eval(), DiffusionConfig(**meta["config"]))
