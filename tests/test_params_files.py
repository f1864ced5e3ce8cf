"""Parameter files a user copies over params.yaml are complete, valid, parse as a DVC pipeline, and
the shipped params.yaml is the code's defaults written out.

Read from the raw YAML, not through the pydantic models: those fill a missing section or key with a
default, which is how a preset without `ablation:` once passed while `dvc repro` could not parse it,
and how a GPU preset without `generator:` would have trained a GAN nobody configured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from classifiers.augment import AugmentConfig
from pipelines.config import SECTIONS, load_section

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILES = ["params.yaml", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "presets").glob("*.yaml"))]
NESTED = {"generator": ("gan", "diffusion")}  # sub-sections: every key of each is listed too


def expected_keys(section: str) -> dict[str, set[str] | None]:
    """Keys a complete file lists in `section`: field -> its own keys where it is a nested mapping."""
    model = SECTIONS[section]
    keys: dict[str, set[str] | None] = {name: None for name in model.model_fields}
    for sub in NESTED.get(section, ()):
        keys[sub] = set(type(model.model_fields[sub].default_factory()).model_fields)
    if "augment" in keys:
        keys["augment"] = set(AugmentConfig.model_fields)
    return keys


def missing_and_unknown(raw: dict) -> list[str]:
    problems = [f"section '{s}' missing" for s in SECTIONS if not isinstance(raw.get(s), dict)]
    for section in SECTIONS:
        values = raw.get(section) or {}
        for key, sub in expected_keys(section).items():
            if key not in values:
                problems.append(f"{section}.{key} missing")
            elif sub is not None:
                have = set(values[key] or {})
                problems += [f"{section}.{key}.{k} missing" for k in sorted(sub - have)]
    return problems


@pytest.mark.parametrize("path", PARAMS_FILES)
def test_every_params_file_lists_every_section_and_key(path):
    """So `dvc exp run -S any.key=value` finds the key, and nothing silently falls back to a default."""
    problems = missing_and_unknown(yaml.safe_load((REPO / path).read_text()))
    assert not problems, f"{path}: {problems[:10]}"


def test_the_completeness_check_catches_a_missing_section_and_key():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["ablation"]
    del raw["generator"]["gan"]["steps"]
    assert {"section 'ablation' missing", "generator.gan.steps missing"} <= set(missing_and_unknown(raw))


@pytest.mark.parametrize("path", PARAMS_FILES)
def test_every_params_file_validates_every_section(path):
    for section in SECTIONS:
        load_section(section, REPO / path)


def test_shipped_params_equal_the_code_defaults():
    """A key left out of a params file takes the code default, which is what params.yaml says it is."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, model in SECTIONS.items():
        defaults = model().to_dict()
        shipped = load_section(section, REPO / "params.yaml").to_dict()
        assert shipped == defaults, {k: (defaults[k], shipped[k]) for k in defaults if defaults[k] != shipped[k]}
        assert set(raw[section]) == set(defaults)


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("path", PARAMS_FILES)
def test_dvc_parses_the_pipeline_with_every_params_file(path, tmp_path):
    """`cp presets/X.yaml params.yaml && dvc stage list`: the matrix stages resolve from the file alone."""
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy2(REPO / path, tmp_path / "params.yaml")
    assert _dvc(tmp_path, "init", "--no-scm", "-q").returncode == 0
    listed = _dvc(tmp_path, "stage", "list", "--name-only")
    assert listed.returncode == 0, listed.stderr[-2000:]
    names = set(listed.stdout.split())
    raw = yaml.safe_load((REPO / path).read_text())["ablation"]
    assert {f"train_real@{arm}-{seed}" for arm in raw["real_arms"] for seed in raw["seeds"]} <= names
    assert {f"train_mix@{m}" for m in raw["mixes"]} | {f"train_control@{c}" for c in raw["controls"]} <= names
    assert {f"train_chosen@{role}-{seed}" for role in ("control", "mix") for seed in raw["seeds"]} <= names
    assert {f"train_cas@{seed}" for seed in raw["seeds"]} <= names
    assert {"prepare", "train_judge", "train_generator", "generate", "filter", "report"} <= names


def test_presets_point_data_at_a_project_folder_a_user_fills():
    """The development copy of FER2013 is given by override, never baked into a preset."""
    for path in PARAMS_FILES[1:]:
        data = yaml.safe_load((REPO / path).read_text())["data"]
        assert data["path"] == "data/raw/fer2013.csv.gz", path
    assert "/data/" in (REPO / ".gitignore").read_text().split()  # data/raw is never committed
