"""Typed, validated configuration read from `params.yaml`.

Each top-level section of `params.yaml` maps to one pydantic model. Unknown or mistyped keys are
errors that name the key (pydantic's `extra="forbid"`), turned into one-line `UserError`s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ValidationError, model_validator

from ablation.config import AblationConfig
from classifiers.config import TrainConfig
from facedata.config import DataConfig
from generators.config import GenerateConfig, GeneratorConfig
from quality.config import FilterConfig
from runtime.errors import UserError


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
    SHIPPED = {"width": 0.25, "dropout": 0.3, "epochs": 5, "steps": 200, "batch_size": 64}


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
    if first["type"] == "extra_forbidden":  # list the keys of the block that holds it (a nested one too)
        model, where = SECTIONS[section], [section]
        for part in first["loc"][:-1]:
            field = model.model_fields.get(str(part))
            if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
                break
            model, where = field.annotation, [*where, str(part)]
        allowed = ", ".join(model.model_fields)
        return f"{path}: unknown key '{loc}'; allowed keys in '{'.'.join(where)}': {allowed}"
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
