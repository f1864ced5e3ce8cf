"""Typed, validated configuration read from `params.yaml`.

Each top-level section of `params.yaml` maps to one pydantic model. Unknown or mistyped keys are
errors that name the key (pydantic's `extra="forbid"`), turned into one-line `UserError`s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import UserError

from classifiers.labels import EXPRESSIONS  # noqa: E402  (re-exported)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class FilterConfig(Section):
    """`filter:` — per-image filters of the synthetic faces (each switchable) and the quality readings."""

    label_fidelity: bool = True
    label_tau: float = Field(0.5, ge=0, le=1)  # keep if the judge's calibrated p(conditioning label) >= tau
    realism: bool = True
    realism_tau: float = Field(0.7, ge=0)  # keep if realism score >= tau (>= 1: inside the real manifold)
    realism_k: int = Field(3, ge=1)
    realism_keep_radii: float = Field(0.5, gt=0, le=1)  # share of real k-NN balls used (smallest radii)
    memorization: bool = True
    memorization_quantile: float = Field(0.01, gt=0, lt=1)  # of real test -> real train NN distances
    pixel_copies: bool = True  # memorization also in pixels: shift-tolerant RMS of standardised faces on the shortlist
    pixel_max_shift: int = Field(2, ge=0, le=8)  # pixels of shift a copy may have
    duplicates: bool = True  # synthetic near-duplicates of each other (same threshold)
    degenerate: bool = True
    min_std: float = Field(4.0, ge=0)  # pixel std below this: a flat image
    max_saturated: float = Field(0.5, gt=0, le=1)  # share of 0/255 pixels above this: saturated
    min_keep_fraction: float = Field(0.1, ge=0, le=1)  # per class; below it: warn and report
    refill: bool = True  # ... and re-admit the class's best rejected images by label fidelity (never copies)
    lpips: bool = True  # LPIPS for memorization and diversity when its backbone weights are on disk
    lpips_top_k: int = Field(5, ge=1)  # LPIPS only on this shortlist from the feature-space k-NN
    max_real_for_metrics: int = Field(10000, ge=100)
    judge_bf16: bool = True  # judge features in bf16 autocast + channels_last where the CPU/GPU has native bf16 (benchmarks/bench_judge_features.py)
    inception: bool = True  # FID/KID on Inception-v3 features too, when its weights file is installed
    inception_samples: int = Field(70, ge=14)  # per set, class-stratified: Inception at 299 px is slow on CPU
    contact_per_class: int = Field(12, ge=1)
    cas_steps: int = Field(0, ge=0)  # CAS before/after filtering (pipelines/cas.py): steps per classifier; 0 = off
    cas_rounds: int = Field(4, ge=1)  # ... in this many rounds, val selection after each
    seed: int = 0


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


from classifiers.config import TrainConfig  # noqa: E402
from generators.config import GenerateConfig, GeneratorConfig  # noqa: E402


class _TrainSection(TrainConfig):
    """A `TrainConfig` whose unset keys take its params.yaml section's shipped values.

    `classifier:` and `judge:` share one model but ship different values; the generic TrainConfig
    defaults stay what Python callers build on. A key a params file leaves out takes these values,
    and tests/test_params_files.py holds them equal to the shipped params.yaml."""

    SHIPPED: ClassVar[dict[str, Any]] = {}

    @model_validator(mode="before")
    @classmethod
    def _shipped_defaults(cls, values: Any) -> Any:
        return {**cls.SHIPPED, **values} if isinstance(values, dict) else values


class ClassifierSection(_TrainSection):
    SHIPPED = {"width": 0.25, "dropout": 0.3, "epochs": 8, "steps": 320, "batch_size": 64}


class JudgeSection(_TrainSection):
    SHIPPED = {"width": 0.25, "epochs": 6, "batch_size": 64, "tta": "none"}


SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataConfig,
    "classifier": ClassifierSection,
    "judge": JudgeSection,
    "generator": GeneratorConfig,
    "generate": GenerateConfig,
    "filter": FilterConfig,
    "ablation": AblationConfig,
}


def _format_error(path: Path, section: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in (section, *first["loc"]))
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(SECTIONS[section].model_fields)
        return f"{path}: unknown key '{loc}'; allowed keys in '{section}': {allowed}"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{path}: {loc}: {msg} (got {first.get('input')!r}); fix it in {path}"


def _yaml_error(path: Path, e: yaml.YAMLError) -> str:
    """One line with where the syntax breaks: str(e) spreads it over several lines and its first one is
    often just 'while parsing a block mapping'. yaml's marks are 0-based; editors count from 1."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or problem is None:
        return f"{path}: not valid YAML ({str(e).splitlines()[0]})"
    context = getattr(e, "context", None)
    detail = f"{problem}, {context}" if context else problem
    return (f"{path}: line {mark.line + 1}, column {mark.column + 1}: not valid YAML ({detail}); "
            "check the indentation, colons and quotes there")


def read_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: parameter file not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(_yaml_error(path, e)) from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise UserError(f"{path}: unknown section '{unknown[0]}'; known sections: {', '.join(SECTIONS)}")
    return raw


def load_section(section: str, path: str | Path = "params.yaml", overrides: dict | None = None):
    """Read and validate one section of the parameter file (all sections are checked for typos)."""
    raw = read_params(path)
    for name, model in SECTIONS.items():
        values = dict(raw.get(name) or {})
        if name == section and overrides:
            values.update(overrides)
        try:
            cfg = model(**values)
        except ValidationError as e:
            raise UserError(_format_error(Path(path), name, e)) from None
        if name == section:
            result = cfg
    return result
