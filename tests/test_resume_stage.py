"""Stage-level resume: `fersynth train-generator` and `fersynth train-real` killed with SIGKILL once a checkpoint
exists, then run again, end with the weights (to the bit) and the dvclive curves (one row per step) of
an uninterrupted run; a rerun on other prepared data of the same size starts afresh. The diffusion
loop's curves are checked in-process (a kill after a row reached disk, before its checkpoint).

Tiny settings on ~140 demo faces; the uninterrupted reference runs in-process (no interpreter start),
the killed and resumed runs are the real command in a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from pipelines.cli import app

FERSYNTH = shutil.which("fersynth") or str(Path(sys.executable).parent / "fersynth")
PARAMS = {
    "data": {"source": "demo", "demo_per_class": [20] * 7},
    "generator": {"kind": "gan", "gan": {"z_dim": 16, "g_channels": [16, 16, 8, 8], "d_head_channels": 8,
                                         "batch_size": 8, "steps": 40, "log_every": 1, "sample_every": 1000,
                                         "quality_every": 10, "quality_samples": 14, "checkpoint_every": 5,
                                         "threads": 1, "device": "cpu", "max_minutes": None}},
    "classifier": {"arch": "compact_cnn", "width": 0.25, "epochs": 8, "steps": None, "batch_size": 16, "tta": "none",
                   "threads": 1, "device": "cpu", "amp": False},
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A folder with tiny params, prepared demo faces and a (randomly initialised) judge."""
    from classifiers.architectures import model_from_config
    from classifiers.config import TrainConfig
    from classifiers.judge import Judge

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["prepare"]).exit_code == 0
    torch.manual_seed(0)
    cfg = TrainConfig(arch="vgg_fer", width=0.125, dropout=0.0)
    Judge(model_from_config(cfg), cfg).save(tmp_path / "models" / "judge" / "model.safetensors")
    return tmp_path


def in_process(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def kill_once_checkpointed(cmd: list[str], cwd: Path, checkpoint: Path) -> None:
    """Run the command until `checkpoint` exists, then SIGKILL it (no handler, no cleanup runs)."""
    log = (cwd / "killed.log").open("w")
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while proc.poll() is None and not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    assert proc.returncode == -signal.SIGKILL, (cwd / "killed.log").read_text()[-2000:]


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def curves(live_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """Every dvclive metric file as [(step, value as written), ...] in file order."""
    out = {}
    for tsv in sorted((live_dir / "plots" / "metrics").glob("*.tsv")):
        rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
        out[tsv.stem] = [(int(step), value) for step, value in rows]
    return out


def assert_same_curves(reference: Path, resumed: Path, timing: set[str]) -> None:
    """One row per step, the steps of the uninterrupted run and, timings aside, its values."""
    a, b = curves(reference), curves(resumed)
    assert a.keys() == b.keys() and a
    for name in a:
        steps = [s for s, _ in b[name]]
        assert steps == sorted(set(steps)) == [s for s, _ in a[name]], name
        if name not in timing:
            assert b[name] == a[name], name


def mirror_train_faces(data_dir: Path) -> None:
    """Other data of the same size, labels and pixel sums: every train face mirrored."""
    from facedata.prepared import LabelledImages, load_split, save_split

    train = load_split(data_dir / "train.safetensors")
    save_split(data_dir / "train.safetensors", LabelledImages(train.images.flip(-1).contiguous(), train.labels))


@pytest.mark.slow
def test_train_gan_killed_and_rerun_matches_an_uninterrupted_run(project):
    common = ["--params", "../params.yaml", "--data", "../data/prepared", "--judge", "../models/judge/model.safetensors"]
    ref, work = project / "ref", project / "work"
    ref.mkdir(), work.mkdir()
    os.chdir(ref)  # dvclive/generator is relative to the working directory
    in_process("train-generator", *common)
    os.chdir(project)

    checkpoint = work / "models" / "generator" / "checkpoints" / "last.safetensors"
    kill_once_checkpointed([FERSYNTH, "train-generator", *common], work, checkpoint)
    from runtime.checkpoint import load_checkpoint

    assert load_checkpoint(checkpoint)[1]["step"] < 40, "killed before the end"
    assert "resuming GAN training" in run([FERSYNTH, "train-generator", *common], work)
    final = work / "models" / "generator" / "model" / "generator.safetensors"
    assert_same_tensors(ref / "models" / "generator" / "model" / "generator.safetensors", final)
    assert_same_curves(ref / "dvclive" / "generator", work / "dvclive" / "generator", timing={"steps_per_s"})

    mirror_train_faces(project / "data" / "prepared")
    before = load_file(str(final))
    os.chdir(work)
    assert "starting afresh" in in_process("train-generator", *common)
    assert any(not torch.equal(before[k], v) for k, v in load_file(str(final)).items()), "retrained on the new data"
    assert [s for s, _ in curves(work / "dvclive" / "generator")["loss_d"]] == list(range(1, 41))


@pytest.mark.slow
def test_train_real_killed_and_rerun_matches_an_uninterrupted_run(project):
    in_process("train-real", "--arm", "real", "--out", "ref", "--metrics", "ref.json")
    checkpoint = project / "work" / "checkpoints" / "last.safetensors"
    cmd = [FERSYNTH, "train-real", "--arm", "real", "--out", "work", "--metrics", "work.json"]
    kill_once_checkpointed(cmd, project, checkpoint)
    from runtime.checkpoint import load_checkpoint

    assert load_checkpoint(checkpoint)[1]["epoch"] + 1 < 8, "killed before the end"
    assert "resuming classifier training from" in run(cmd, project)
    for name in ("model.safetensors", "predictions.safetensors"):
        assert_same_tensors(project / "ref" / name, project / "work" / name)
    assert_same_curves(project / "ref" / "dvclive", project / "work" / "dvclive",
                       timing={"epoch_seconds", "elapsed_minutes"})

    mirror_train_faces(project / "data" / "prepared")
    before = load_file(str(project / "work" / "model.safetensors"))
    assert "starting afresh" in in_process("train-real", "--arm", "real", "--out", "work", "--metrics", "work.json")
    after = load_file(str(project / "work" / "model.safetensors"))
    assert any(not torch.equal(before[k], v) for k, v in after.items()), "retrained on the new data"


def test_diffusion_resume_keeps_its_dvclive_curves(tmp_path):
    from facedata.sources.demo_faces import draw_demo_faces
    from generators.diffusion_training import DiffusionConfig, train_diffusion
    from runtime.live import dvclive_logger

    demo = draw_demo_faces(10, seed=3)
    cfg = DiffusionConfig(patch_size=2, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8,
                          attention_head_dim=8, batch_size=8, steps=8, log_every=2, checkpoint_every=4,
                          num_inference_steps=2, quality_inference_steps=2, grid_per_class=1, quality_per_class=1,
                          sample_every=1000, quality_every=1000, threads=1, device="cpu")
    live, log = dvclive_logger(tmp_path / "live_a")
    train_diffusion(*demo, cfg, checkpoint_dir=tmp_path / "a", log=log, progress=False)
    live.end()

    class Killed(Exception):
        pass

    _, log = dvclive_logger(tmp_path / "live_b")

    def log_then_die_at_step_6(row, step):
        log(row, step)
        if step == 6:
            raise Killed  # row 6 is on disk, the step-4 checkpoint is the last one

    with pytest.raises(Killed):
        train_diffusion(*demo, cfg, checkpoint_dir=tmp_path / "b", log=log_then_die_at_step_6, progress=False)
    live, log = dvclive_logger(tmp_path / "live_b")
    train_diffusion(*demo, cfg, checkpoint_dir=tmp_path / "b", log=log, progress=False)
    live.end()
    assert [s for s, _ in curves(tmp_path / "live_b")["loss"]] == [2, 4, 6, 8]
    assert_same_curves(tmp_path / "live_a", tmp_path / "live_b", timing={"seconds_per_step", "elapsed_minutes"})
