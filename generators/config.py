"""Typed configuration of the generators (`generator:` section) and of generation (`generate:`).

The diffusion settings belong to `generators/diffusion.py` (`DiffusionConfig`); they are validated
lazily by importing it, so the GAN side works while that module is absent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from classifiers.labels import EXPRESSIONS

DIFFAUG_OPS = ("translation", "cutout", "color", "brightness", "contrast")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GanConfig(_Frozen):
    """A class-conditional GAN and its training schedule. Every field is a params.yaml key."""

    # networks
    z_dim: int = Field(64, ge=1)
    g_channels: list[int] = Field(default_factory=lambda: [128, 64, 32, 16])  # at 6, 12, 24, 48 px
    g_sle: bool = True  # FastGAN skip-layer excitation: 6x6 features gate the 24x24 and 48x48 maps
    d_kind: Literal["projected", "plain"] = "projected"
    d_channels: list[int] = Field(default_factory=lambda: [32, 64, 128, 256])  # plain D, at 48, 24, 12, 6 px
    d_head_channels: int = Field(32, ge=8)  # projected D: width of each head on the judge's maps
    judge_maps: list[int] = Field(default_factory=lambda: [0, 1, 2])  # which judge maps (24, 12, 6 px) feed heads
    judge_penultimate: bool = True  # projected D: one more head (class projection) on the judge's features
    judge_guidance: float = Field(0.1, ge=0)  # G loss += w * CE(judge(G(z, y)), y); 0 = off
    # mode seeking (Mao et al. 2019, MSGAN): G loss += w / (|G(z1,y) - G(z2,y)| / |z1 - z2|), fakes drawn in
    # same-label pairs; against the per-class collapse a projected D with judge guidance falls into; 0 = off
    mode_seeking: float = Field(0.0, ge=0)

    # optimisation (hinge loss, two-timescale Adam)
    batch_size: int = Field(32, ge=2)
    steps: int = Field(2000, ge=1)
    g_lr: float = Field(2e-4, gt=0)
    d_lr: float = Field(4e-4, gt=0)
    betas: tuple[float, float] = (0.0, 0.99)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    r1_gamma: float = Field(0.0, ge=0)  # 0 = off
    r1_every: int = Field(4, ge=1)  # lazy R1 (Karras et al. 2020): penalty every k D steps, scaled by k
    diffaug: str = "translation,cutout,color"  # DiffAugment policy, comma-separated; "" = off

    # readings, checkpoints, budget
    log_every: int = Field(25, ge=1)
    sample_every: int = Field(250, ge=1)
    quality_every: int = Field(250, ge=1)
    quality_samples: int = Field(700, ge=7)  # fixed class-balanced batch for GAN-test and KID
    checkpoint_every: int = Field(100, ge=1)
    seed: int = 0
    max_minutes: float | None = Field(None, gt=0)
    threads: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # bfloat16 autocast, CUDA only
    channels_last: bool = True  # CUDA only

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

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _diffusion_config_class():
    """generators.diffusion.DiffusionConfig, or None while that module does not exist yet."""
    try:
        from generators.diffusion import DiffusionConfig
    except ImportError:
        return None
    return DiffusionConfig


class GeneratorConfig(_Frozen):
    """`generator:` — which kind of generator to train, with the settings of each kind."""

    kind: Literal["gan", "diffusion"] = "gan"
    gan: GanConfig = Field(default_factory=GanConfig)
    diffusion: Any = Field(default_factory=dict)  # a DiffusionConfig once generators/diffusion.py exists

    @field_validator("diffusion", mode="before")
    @classmethod
    def _diffusion(cls, v: Any) -> Any:
        config_cls = _diffusion_config_class()
        if config_cls is None or isinstance(v, config_cls):
            return v if v is not None else {}
        return config_cls(**(v or {}))

    @model_validator(mode="after")
    def _diffusion_available(self) -> "GeneratorConfig":
        if self.kind == "diffusion" and _diffusion_config_class() is None:
            raise ValueError("kind 'diffusion' needs generators/diffusion.py, which is not installed")
        return self

    def to_dict(self) -> dict[str, Any]:
        diffusion = self.diffusion
        if isinstance(diffusion, BaseModel):
            diffusion = diffusion.model_dump(mode="json")
        return {"kind": self.kind, "gan": self.gan.to_dict(), "diffusion": diffusion}


class GenerateConfig(_Frozen):
    """`generate:` — how many synthetic faces per class, and how to draw them."""

    policy: Literal["per_class", "balance", "counts"] = "per_class"
    per_class: int | None = Field(1000, ge=0)  # policy per_class
    counts: list[int] | None = None  # policy counts: 7 numbers, one per expression
    truncation: float | None = Field(None, gt=0)  # GAN: resample |z| components above this
    guidance_scale: float = Field(2.0, ge=0)  # diffusion: classifier-free guidance
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
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
