"""Presets meant to be copied over params.yaml for `dvc repro` / `dvc exp run` must hold every
parameter dvc.yaml names, and must load: DVC does not know the defaults in pipelines/config.py, so a
missing `ablation.selection_seed` stopped a FER2013 study an hour in."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.config import load_section

REPO = Path(__file__).resolve().parents[1]
DVC_PRESETS = ["params.yaml", "presets/fer2013-cpu-study.yaml"]


def dvc_param_keys() -> set[str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {p for stage in stages.values() for p in stage.get("params", []) if isinstance(p, str)}


def has_key(params: dict, dotted: str) -> bool:
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("preset", DVC_PRESETS)
def test_dvc_presets_hold_every_parameter_dvc_yaml_names(preset):
    params = yaml.safe_load((REPO / preset).read_text())
    missing = sorted(k for k in dvc_param_keys() if not has_key(params, k))
    assert not missing, f"{preset} lacks {missing}"


@pytest.mark.parametrize("preset", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "presets").glob("*.yaml")))
def test_every_preset_loads_and_validates(preset):
    load_section("data", REPO / preset)  # validates every section, not only data
