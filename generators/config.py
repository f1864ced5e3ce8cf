"""Typed configuration of the generators (`generator:` section) and of generation (`generate:`).

The diffusion settings live here too, not next to the diffusion code: validating params.yaml then
never imports `diffusers` (1.5 s of every stage's start-up on 2 cores).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from runtime.config import Section
from runtime.labels import EXPRESSIONS

DIFFAUG_OPS = ("translation", "cutout", "color", "brightness", "contrast")


class _TrainingRun(Section):
    """How a generator's training run executes, the same keys for both kinds."""

    seed: int = 0
    max_minutes: float | None = Field(None, gt=0)
    threads: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bfloat16 autocast, CUDA only


class GanConfig(_TrainingRun):
    """A class-conditional GAN and its training schedule. Every field is a params.yaml key.

    Defaults equal the shipped params.yaml (the demo on 2 CPU cores); tests/test_params_files.py holds
    the two together."""

    # what a checkpoint may differ in and still resume: run length, budget, readings, where it runs
    NOT_FINGERPRINTED: ClassVar[frozenset[str]] = frozenset({
        "steps", "max_minutes", "log_every", "sample_every", "quality_every", "quality_samples", "checkpoint_every",
        "threads", "device"})

    max_minutes: float | None = Field(6, gt=0)  # a safety net: 300 demo steps take ~1.5 min on 2 quiet cores

    # networks
    z_dim: int = Field(64, ge=1)
    g_channels: list[int] = Field(default_factory=lambda: [128, 64, 32, 16])  # at 6, 12, 24, 48 px
    g_sle: bool = True  # FastGAN skip-layer excitation: 6x6 features gate the 24x24 and 48x48 maps
    d_kind: Literal["projected", "plain"] = "projected"
    d_channels: list[int] = Field(default_factory=lambda: [32, 64, 128, 256])  # plain D, at 48, 24, 12, 6 px
    d_head_channels: int = Field(32, ge=8)  # projected D: width of each head on the judge's maps
    judge_maps: list[int] = Field(default_factory=lambda: [0, 1, 2])  # which judge maps (24, 12, 6 px) feed heads
    judge_penultimate: bool = True  # projected D: one more head (class projection) on the judge's features
    judge_guidance: float = Field(0.5, ge=0)  # G loss += w * CE(judge(G(z, y)), y); 0 = off
    # mode seeking (Mao et al. 2019, MSGAN): G loss += w / (|G(z1,y) - G(z2,y)| / |z1 - z2|), fakes drawn in
    # same-label pairs; against the per-class collapse a projected D with judge guidance falls into; 0 = off
    mode_seeking: float = Field(1.0, ge=0)

    # optimisation (hinge loss, two-timescale Adam)
    batch_size: int = Field(32, ge=2)
    steps: int = Field(300, ge=1)
    g_lr: float = Field(2e-4, gt=0)
    d_lr: float = Field(4e-4, gt=0)
    betas: tuple[float, float] = (0.0, 0.99)
    ema_decay: float = Field(0.99, ge=0, lt=1)
    r1_gamma: float = Field(0.0, ge=0)  # 0 = off
    r1_every: int = Field(4, ge=1)  # lazy R1 (Karras et al. 2020): penalty every k D steps, scaled by k
    diffaug: str = "translation,cutout,color"  # DiffAugment policy, comma-separated; "" = off

    # readings, checkpoints, budget
    log_every: int = Field(25, ge=1)
    sample_every: int = Field(100, ge=1)
    quality_every: int = Field(100, ge=1)
    quality_samples: int = Field(350, ge=7)  # fixed class-balanced batch for GAN-test and KID
    checkpoint_every: int = Field(50, ge=1)
    channels_last: bool = True  # CUDA and CPU (nearest upsampling is ~7x slower in NCHW on CPU)

    @field_validator("g_channels")
    @classmethod
    def _four_g(cls, v: list[int]) -> list[int]:
        if len(v) != 4 or min(v) < 1:
            raise ValueError("must list 4 positive channel counts (at 6, 12, 24, 48 px)")
        return v

    @field_validator("d_channels")
    @classmethod
    def _four_d(cls, v: list[int]) -> list[int]:
        if len(v) != 4 or min(v) < 1:
            raise ValueError("must list 4 positive channel counts (at 48, 24, 12, 6 px)")
        return v

    @field_validator("judge_maps")
    @classmethod
    def _maps(cls, v: list[int]) -> list[int]:
        if not v or any(i not in (0, 1, 2) for i in v) or len(set(v)) != len(v):
            raise ValueError("must list distinct judge map indices from 0 (24 px), 1 (12 px), 2 (6 px)")
        return sorted(v)

    @field_validator("diffaug")
    @classmethod
    def _policy(cls, v: str) -> str:
        ops = [p.strip() for p in v.split(",") if p.strip()]
        bad = [p for p in ops if p not in DIFFAUG_OPS]
        if bad:
            raise ValueError(f"unknown DiffAugment op '{bad[0]}'; choose from {', '.join(DIFFAUG_OPS)}")
        return ",".join(ops)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("both Adam betas must be in [0, 1)")
        return v


MAX_LEVELS = {1: 5, 2: 4}  # patch size -> most UNet levels (48 -> 24 -> 12 -> 6 -> 3 stays integer)


class DiffusionConfig(_TrainingRun):
    """The diffusion generator's params.yaml section; every field has a key of the same name."""

    # the fields that shape the training trajectory decide whether a checkpoint resumes; length, budget,
    # readings, sampling and threads may change between runs (e.g. train longer)
    NOT_FINGERPRINTED: ClassVar[frozenset[str]] = frozenset({
        "steps", "max_minutes", "threads", "device", "sample_scheduler", "num_inference_steps", "guidance_scale",
        "ddim_eta", "sample_unet_batch", "sample_every", "grid_per_class", "quality_every", "quality_per_class",
        "quality_inference_steps", "checkpoint_every", "log_every"})

    # Defaults equal the shipped params.yaml (the demo, 2 CPU cores, a few minutes); see presets for FER2013 / GPU.
    max_minutes: float | None = Field(5, gt=0)
    # UNet: one level per entry of block_out_channels, each level but the last halves the size
    # (24 -> 12 -> 6 for three levels at patch_size 2). Self-attention only at the lowest resolutions.
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    # patch_size 2 folds each 2x2 pixel block into 4 channels (pixel_unshuffle) so the UNet works
    # at 24x24: ~4x fewer FLOPs at the costliest level, same pixel-space diffusion (Hoogeboom et
    # al. 2023, "simple diffusion"). 1 = the UNet sees 48x48 directly.
    patch_size: Literal[1, 2] = 2
    layers_per_block: int = Field(1, ge=1, le=4)
    attention_levels: int = Field(1, ge=0)  # how many of the lowest-resolution levels get attention
    mid_attention: bool = True  # self-attention in the middle block (lowest resolution)
    attention_head_dim: int = Field(32, ge=1)
    norm_num_groups: int = Field(16, ge=1)

    # Noise process and objective
    num_train_timesteps: int = Field(1000, ge=10)
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    # v-prediction stays well-conditioned at the cosine schedule's near-zero-SNR last timestep,
    # which trailing-spaced few-step samplers start from (Salimans & Ho 2022; Lin et al. 2024).
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    snr_gamma: float | None = Field(5.0, gt=0)  # min-SNR loss weighting (Hang et al. 2023); None = plain MSE

    # Training
    steps: int = Field(600, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)  # the cap; EMA warm-up ramps towards it
    ema_power: float = Field(0.75, gt=0)  # EMA warm-up: decay = 1 - (1 + step) ** -power, capped
    p_uncond: float = Field(0.1, ge=0, lt=1)  # label dropout to the null class
    hflip: bool = True  # random horizontal flips of the training faces
    balanced_sampling: bool = True  # every expression drawn equally often

    # Sampling
    sample_scheduler: Literal["ddim", "dpm_solver"] = "dpm_solver"
    num_inference_steps: int = Field(20, ge=1)
    guidance_scale: float = Field(2.0, ge=0)  # eps = eps_u + s (eps_c - eps_u); 1 = conditional only
    ddim_eta: float = Field(0.0, ge=0, le=1)  # > 0 adds per-step noise (still seeded per image)
    # Rows per UNet forward when sampling, always exactly this many (the last chunk is padded):
    # CPU/GPU kernels round differently for different batch shapes, so a fixed shape is what
    # makes an image independent of its batch-mates. 32 suits CPU; use 256-512 on a GPU.
    sample_unet_batch: int = Field(32, ge=1)

    # Readings during training
    sample_every: int = Field(200, ge=1)
    grid_per_class: int = Field(8, ge=1)  # columns of the sample grid (one row per expression)
    quality_every: int = Field(200, ge=1)
    quality_per_class: int = Field(16, ge=1)
    quality_inference_steps: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(25, ge=1)

    @model_validator(mode="after")
    def _check_unet(self) -> "DiffusionConfig":
        levels, most = len(self.block_out_channels), MAX_LEVELS[self.patch_size]
        if not 1 <= levels <= most:
            raise ValueError(f"block_out_channels: 1 to {most} levels for 48x48 images at patch_size "
                             f"{self.patch_size}, got {levels}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"block_out_channels: {c} is not divisible by norm_num_groups {self.norm_num_groups}")
        if self.attention_levels > levels:
            raise ValueError(f"attention_levels {self.attention_levels} exceeds the {levels} UNet levels")
        attended = list(self.block_out_channels[levels - self.attention_levels:])
        attended += [self.block_out_channels[-1]] if self.mid_attention else []
        for c in attended:
            if c % self.attention_head_dim:
                raise ValueError(f"block_out_channels: {c} is not divisible by attention_head_dim {self.attention_head_dim}")
        return self




class GeneratorConfig(Section):
    """`generator:` — which kind of generator to train, with the settings of each kind."""

    kind: Literal["gan", "diffusion"] = "gan"
    gan: GanConfig = Field(default_factory=GanConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)

    @field_validator("diffusion", mode="before")
    @classmethod
    def _diffusion(cls, v: Any) -> Any:
        return {} if v is None else v



class GenerateConfig(Section):
    """`generate:` — where the synthetic faces come from, how many per class, and how to draw them."""

    source: Literal["model", "folder"] = "model"  # folder: faces made elsewhere; train_generator and sampling are skipped
    folder: str = "synthetic_in"  # source folder: <class>/<image> or a Hugging Face imagefolder (metadata.csv)
    policy: Literal["per_class", "balance", "counts"] = "per_class"
    per_class: int | None = Field(1000, ge=0)  # policy per_class
    counts: list[int] | None = None  # policy counts: 7 numbers, one per expression
    truncation: float | None = Field(None, gt=0)  # GAN: resample |z| components above this
    guidance_scale: float = Field(2.0, ge=0)  # diffusion: classifier-free guidance
    mode: Literal["sample", "edit"] = "sample"  # edit (diffusion only): SDEdit real train faces toward the target expression
    edit_strength: float = Field(0.5, gt=0, le=1)  # edit: share of the noise schedule the source is pushed into (t0)
    edit_from: list[str] | None = None  # edit: expressions whose real faces are edited; null = every one but the target
    seed: int = Field(0, ge=0)  # image i gets z-seed seed * 10_000_000 + i
    batch_size: int = Field(256, ge=1)
    export_png: bool = False
    export_csv: bool = False

    @model_validator(mode="after")
    def _policy_inputs(self) -> "GenerateConfig":
        if self.policy == "per_class" and self.per_class is None:
            raise ValueError("policy 'per_class' needs per_class (images per expression)")
        if self.policy == "counts":
            if self.counts is None or len(self.counts) != len(EXPRESSIONS) or any(c < 0 for c in self.counts):
                raise ValueError(f"policy 'counts' needs counts: {len(EXPRESSIONS)} numbers >= 0, one per expression")
        if self.source == "folder" and self.mode == "edit":
            raise ValueError("mode 'edit' needs source 'model' (a diffusion generator edits real faces); a folder's faces are taken as they are")
        unknown = [e for e in self.edit_from or [] if e not in EXPRESSIONS]
        if unknown:
            raise ValueError(f"edit_from: '{unknown[0]}' is not an expression ({', '.join(EXPRESSIONS)})")
        return self
