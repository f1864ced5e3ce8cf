"""Typed, validated configuration read from `params.yaml`.

Each top-level section of `params.yaml` maps to one pydantic model. Unknown or mistyped keys are
errors that name the key (pydantic's `extra="forbid"`), turned into one-line `UserError`s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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


from classifiers.config import TrainConfig  # noqa: E402

SECTIONS: dict[str, type[BaseModel]] = {"data": DataConfig, "classifier": TrainConfig, "judge": TrainConfig}


def _format_error(path: Path, section: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in (section, *first["loc"]))
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(SECTIONS[section].model_fields)
        return f"{path}: unknown key '{loc}'; allowed keys in '{section}': {allowed}"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{path}: {loc}: {msg} (got {first.get('input')!r}); fix it in {path}"


def read_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: parameter file not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
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
