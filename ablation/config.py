"""`ablation:` of params.yaml: the arms trained (DVC matrix stages over arm/ratio x seed) and their statistics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from runtime.config import Section


class AblationConfig(Section):
    """`ablation:` — the arms trained (DVC matrix stages over arm/ratio x seed) and their statistics."""

    real_arms: list[Literal["real", "no_augment"]] = Field(default_factory=lambda: ["real", "no_augment"])
    ratios: list[float] = Field(default_factory=lambda: [0.5, 1.0])  # synthetic count / real count, > 0
    seeds: list[int] = Field(default_factory=lambda: [0, 1])
    mode: Literal["proportional", "balance"] = "proportional"
    synthetic: Literal["filtered", "raw"] = "filtered"  # the filter stage's kept set, or everything generated
    selection_seed: int = 0  # which synthetic images each ratio uses (nested across ratios)
    n_boot: int = Field(2000, ge=100)  # bootstrap resamples for CIs and paired differences

    @field_validator("real_arms")
    @classmethod
    def _real(cls, v: list[str]) -> list[str]:
        if "real" not in v or len(set(v)) != len(v):
            raise ValueError("must list 'real' (the r = 0 arm every ratio is compared with), optionally 'no_augment'")
        return v

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        if not v or any(r <= 0 for r in v) or len(set(v)) != len(v):
            raise ValueError("must list distinct ratios > 0 (r = 0 is the 'real' arm)")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError("must list one or more distinct seeds")
        return v
