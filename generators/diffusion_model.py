"""The diffusion generator's network and schedulers (diffusers): a class-conditional `UNet2DModel` for
48x48 grayscale faces, with class embeddings for the 7 expressions plus a null class used for
classifier-free guidance; a `DDPMScheduler` adds the noise in training and a fast deterministic
solver (DDIM or DPM-Solver++) samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

from generators.config import DiffusionConfig
from runtime.labels import EXPRESSIONS

NUM_CLASSES = len(EXPRESSIONS)  # 7


NULL_CLASS = NUM_CLASSES  # class index 7 = "no label", for classifier-free guidance


IMAGE_SIZE = 48


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
