"""`ablation:` of params.yaml: the arms trained (DVC matrix stages), how they are screened and confirmed,
the levers' settings and the statistics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ablation.names import CONTROLS, parse_mix
from runtime.config import Section


class AblationConfig(Section):
    """`ablation:` — real arms and CAS on every seed; controls and mixes screened on val with
    `screen_seed`; the val-best control and mix then trained on every seed (stage train_chosen)."""

    real_arms: list[Literal["real", "no_augment"]] = Field(default_factory=lambda: ["real", "no_augment"])
    controls: list[Literal["distill", "mixup", "cutmix"]] = Field(default_factory=lambda: ["distill"])  # of CONTROLS
    mixes: list[str] = Field(default_factory=lambda: ["soft-s0.25"])  # ablation/names.py
    seeds: list[int] = Field(default_factory=lambda: [0])
    screen_seed: int = 100  # not one of `seeds`: the confirmed numbers come from seeds the choice never saw
    mode: Literal["proportional", "balance"] = "proportional"
    synthetic: Literal["filtered", "raw"] = "filtered"  # the filter stage's kept set, or everything generated
    selection_seed: int = 0  # which synthetic images each ratio uses (nested across ratios)
    teacher_temperature: float = Field(1.0, gt=0)  # on top of the judge's own calibration temperature
    soft_weight: float = Field(1.0, ge=0, le=1)  # soft target = (1 - w) one-hot conditioning label + w teacher
    distill_weight: float = Field(0.5, ge=0, le=1)  # distill control: (1 - w) one-hot label + w teacher, real faces
    mixup_alpha: float = Field(1.0, gt=0)
    cutmix_alpha: float = Field(1.0, gt=0)
    n_boot: int = Field(2000, ge=100)  # bootstrap resamples for CIs and paired differences

    @field_validator("real_arms")
    @classmethod
    def _real(cls, v: list[str]) -> list[str]:
        if "real" not in v or len(set(v)) != len(v):
            raise ValueError("must list 'real' (the reference every arm is compared with), optionally 'no_augment'")
        return v

    @field_validator("controls")
    @classmethod
    def _controls(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must list one or more distinct controls of {', '.join(CONTROLS)}")
        return v

    @field_validator("mixes")
    @classmethod
    def _mixes(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("must list one or more distinct mixes, e.g. [hard-r0.5, soft-s0.25]")
        for name in v:
            parse_mix(name)
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError("must list one or more distinct seeds")
        return v

    @model_validator(mode="after")
    def _screen_apart(self) -> AblationConfig:
        if self.screen_seed in self.seeds:
            raise ValueError(f"screen_seed {self.screen_seed} is one of seeds {self.seeds}: screen with a seed of its "
                             "own, so the confirmed numbers come from runs the choice never saw")
        return self
