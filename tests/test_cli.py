"""The command line itself: fixed-choice options, --version, -h, one default model, predict's JSON only on request."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

import pipelines.cli_tools  # noqa: F401  (registers predict/explain/export-model)
from pipelines import cli_common as cli
from pipelines.cli import app

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)


def test_every_stage_and_tool_is_registered():
    assert {"prepare", "evaluate", "predict", "explain", "export-model", "train-real", "train-mix", "train-cas", "report"} <= set(COMMANDS)


def test_version_prints_the_installed_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"fersynth {importlib.metadata.version('fersynth')}"


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=["app", *COMMANDS])
def test_dash_h_is_help(command):
    short, long = runner.invoke(app, [*command, "-h"]), runner.invoke(app, [*command, "--help"])
    assert short.exit_code == 0, short.output
    assert "Usage:" in short.stdout and short.stdout == long.stdout


@pytest.mark.parametrize(("command", "option", "allowed"), [
    (["evaluate"], "--split", ["train", "val", "test"]),
    (["explain"], "--split", ["train", "val", "test"]),
    (["evaluate"], "--tta", ["none", "flip", "flip_crops"]),
    (["predict", "photo.jpg"], "--tta", ["none", "flip", "flip_crops"]),
    (["explain"], "--target", ["true", "predicted", "angry", "surprise", "neutral"]),
])
def test_fixed_choice_options_reject_other_values_listing_the_allowed_ones(tmp_path, command, option, allowed):
    """Rejected while parsing, exit 2, before any model is loaded or anything is written."""
    result = runner.invoke(app, [*command, option, "bogus", "--model", str(tmp_path / "none.safetensors")])
    assert result.exit_code == 2, result.output
    assert f"'{option}'" in result.stderr and "'bogus' is not one of" in result.stderr
    for value in allowed:
        assert f"'{value}'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_ablation_arm_commands_refuse_arms_of_another_stage(tmp_path):
    """train-real takes only the real-data arms, train-mix only a ratio > 0: one line, exit 2, nothing written."""
    real = runner.invoke(app, ["train-real", "--arm", "0.5", "--out", str(tmp_path / "run")])
    assert real.exit_code == 2 and "'0.5' is not one of" in real.stderr and "'no_augment'" in real.stderr
    mix = runner.invoke(app, ["train-mix", "--mix", "soft-r0", "--params", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "run")])
    assert mix.exit_code == 2, mix.output
    assert mix.stderr.strip().splitlines() == [mix.stderr.strip()] and "must be > 0" in mix.stderr
    share = runner.invoke(app, ["train-mix", "--mix", "soft-s1", "--params", str(tmp_path / "none.yaml")])
    assert share.exit_code == 2 and "between 0 and 1" in share.stderr
    typo = runner.invoke(app, ["train-mix", "--mix", "sof-r1", "--params", str(tmp_path / "none.yaml")])
    assert typo.exit_code == 2 and "hard-r0.5" in typo.stderr
    assert list(tmp_path.iterdir()) == []


def test_choice_lists_match_the_modules_they_repeat():
    import pipelines.cli
    from classifiers.augment import TTA_MODES
    from facedata.prepared import SPLITS
    from runtime.labels import EXPRESSIONS

    assert cli.SPLITS == SPLITS and cli.TTA_MODES == TTA_MODES
    assert [t.value for t in pipelines.cli_tools.Target] == ["true", "predicted", *EXPRESSIONS]


def test_model_commands_share_the_model_dvc_repro_trains():
    """evaluate, predict, explain and export-model default to train_real's first arm and seed, as params.yaml
    ships them (real, 0), so they work right after `dvc repro`."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    stage = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["train_real"]
    ablation = yaml.safe_load((repo / "params.yaml").read_text())["ablation"]
    arm, seed = ablation["real_arms"][0], ablation["seeds"][0]
    out = stage["outs"][stage["outs"].index("runs/${item.arm}/s${item.seed}/model.safetensors")]
    assert cli.DEFAULT_MODEL == Path(out.replace("${item.arm}", arm).replace("${item.seed}", str(seed)))
    for name in ("evaluate", "predict", "explain", "export-model"):
        params = {p.name: p for p in typer.main.get_command(app).commands[name].params}
        assert Path(params["model"].default) == cli.DEFAULT_MODEL, name


@pytest.fixture
def tiny_model_file(tmp_path):
    from classifiers.architectures import build_model
    from classifiers.config import TrainConfig
    from classifiers.saved_model import save_classifier

    torch.manual_seed(0)
    path = tmp_path / "model" / "model.safetensors"
    path.parent.mkdir()
    save_classifier(path, build_model("compact_cnn", width=0.25).eval(), TrainConfig(arch="compact_cnn", width=0.25, tta="none"))
    return path


def test_predict_writes_json_only_with_dash_dash_json(tmp_path, tiny_model_file, monkeypatch, one_thread):
    photo = tmp_path / "photos" / "wall.png"
    photo.parent.mkdir()
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(photo)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = runner.invoke(app, ["predict", str(photo), "--model", str(tiny_model_file)])
    assert result.exit_code == 0, result.output
    assert "no face found" in result.stdout and "predictions ->" not in result.stdout
    assert list(work.iterdir()) == [], "no --json: nothing written"
    result = runner.invoke(app, ["predict", str(photo), "--model", str(tiny_model_file), "--json", "p.json"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in work.iterdir()] == ["p.json"]


def test_evaluate_passes_the_chosen_split_and_tta_on(tmp_path, tiny_model_file, one_thread):
    from facedata.prepared import LabelledImages, save_split
    from facedata.sources.demo_faces import draw_demo_faces

    x, y = draw_demo_faces(3, seed=2)
    save_split(tmp_path / "prepared" / "val.safetensors", LabelledImages(x, y))
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_model_file), "--data", str(tmp_path / "prepared"),
                                 "--split", "val", "--tta", "flip", "--out", str(tmp_path / "ev"), "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (report["split"], report["tta"], report["n"]) == ("val", "flip", 21)
