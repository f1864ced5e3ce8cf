"""`data:` of params.yaml: where the real faces come from and how they are split and subsampled."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from runtime.config import Section
from runtime.labels import EXPRESSIONS


class DataConfig(Section):
    """`data:` — where the real faces come from and how they are split and subsampled."""

    source: Literal["demo", "fer2013", "image_folder"] = "demo"
    path: str | None = None
    seed: int = 0
    demo_per_class: list[int] = Field(default_factory=lambda: [500, 150, 450, 700, 500, 400, 550])
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    real_fraction: float = Field(1.0, gt=0, le=1)
    dedupe: bool = False
    lenient: bool = False
    class_map: dict[str, str] = Field(default_factory=dict)

    @field_validator("demo_per_class")
    @classmethod
    def _seven_counts(cls, v: list[int]) -> list[int]:
        if len(v) != len(EXPRESSIONS) or any(c < 3 for c in v):
            raise ValueError("must list 7 counts (one per expression), each >= 3")
        return v

    @field_validator("class_map")
    @classmethod
    def _known_targets(cls, v: dict[str, str]) -> dict[str, str]:
        bad = {k: t for k, t in v.items() if t not in EXPRESSIONS and t != "drop"}
        if bad:
            k, t = next(iter(bad.items()))
            raise ValueError(f"'{k}' maps to '{t}', which is not one of {', '.join(EXPRESSIONS)} or 'drop'")
        return {k.lower(): t for k, t in v.items()}

    @model_validator(mode="after")
    def _path_when_needed(self) -> "DataConfig":
        if self.source != "demo" and not self.path:
            raise ValueError(f"source '{self.source}' needs data.path (a FER2013 CSV or an image folder)")
        return self
