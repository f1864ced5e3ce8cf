"""Classifier training: resume after interrupt, selection on val, judge calibration, evaluate CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from classifiers.config import TrainConfig
from classifiers.judge import Judge
from classifiers.training import train_classifier
from facedata.sources.demo_faces import draw_demo_faces
from pipelines.cli import app

REPO = Path(__file__).resolve().parents[1]
TINY = dict(arch="compact_cnn", width=0.25, epochs=3, batch_size=32, lr=0.05, tta="none", threads=2)


@pytest.fixture(scope="module")
def demo():
    x, y = draw_demo_faces(40, seed=1)
    return x[:210], y[:210], x[210:], y[210:]


class Interrupt(Exception):
    pass


def test_resume_after_interrupt_continues_exactly(tmp_path, demo):
    cfg = TrainConfig(**TINY)
    straight = train_classifier(*demo, cfg, checkpoint_dir=tmp_path / "a", progress=False)

    first_rows = []

    def interrupt_at_epoch_2(row, epoch):
        first_rows.append(row)
        if epoch == 2:
            raise Interrupt  # like a kill during epoch 2: the epoch-1 checkpoint is on disk
    with pytest.raises(Interrupt):
        train_classifier(*demo, cfg, checkpoint_dir=tmp_path / "b", log=interrupt_at_epoch_2, progress=False)
    seen = []
    resumed = train_classifier(*demo, cfg, checkpoint_dir=tmp_path / "b", log=lambda r, e: seen.append(e),
                               progress=False)
    assert seen == [2, 3], "the resumed run trains (and logs) from epoch 2; the logger keeps epoch 1"
    assert resumed.history[0] == first_rows[0], "epoch 1 must come from the checkpoint (same timing), not be retrained"
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    seen.clear()
    again = train_classifier(*demo, cfg, checkpoint_dir=tmp_path / "b", log=lambda r, e: seen.append(e), progress=False)
    assert seen == [] and len(again.history) == 3, "a finished run resumes to its end and trains no more"
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    assert resumed.best_val == straight.best_val


def _curves(live_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every dvclive metric file under live_dir as [(step, value), ...] in file order."""
    out = {}
    for tsv in sorted((live_dir / "plots" / "metrics").glob("*.tsv")):
        rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
        out[tsv.stem] = [(int(step), float(value)) for step, value in rows]
    return out


def test_resumed_run_keeps_its_dvclive_curves_once_per_epoch(tmp_path, demo):
    """A run killed after logging epoch 2 but before its checkpoint resumes from epoch 1: the curves keep
    epoch 1, drop the orphaned epoch-2 row and end with one row per epoch, equal to an uninterrupted run's."""
    from runtime.live import dvclive_logger

    cfg = TrainConfig(**TINY)
    live, log = dvclive_logger(tmp_path / "live_a")
    train_classifier(*demo, cfg, checkpoint_dir=tmp_path / "a", log=log, progress=False)
    live.end()

    live_b = tmp_path / "live_b"
    _, killed = dvclive_logger(live_b)

    def log_then_die_at_epoch_2(row, epoch):
        killed(row, epoch)  # the row reaches disk, the epoch-2 checkpoint never does
        if epoch == 2:
            raise Interrupt
    with pytest.raises(Interrupt):
        train_classifier(*demo, cfg, checkpoint_dir=tmp_path / "b", log=log_then_die_at_epoch_2, progress=False)
    assert [s for s, _ in _curves(live_b)["val_accuracy"]] == [1, 2]
    live, log = dvclive_logger(live_b)
    train_classifier(*demo, cfg, checkpoint_dir=tmp_path / "b", log=log, progress=False)
    live.end()

    a, b = _curves(tmp_path / "live_a"), _curves(live_b)
    assert a.keys() == b.keys() and "val_accuracy" in b
    for name in ("train_loss", "val_accuracy", "val_nll", "lr"):
        assert b[name] == a[name], name  # one row per epoch 1, 2, 3, the same values
    assert [s for s, _ in b["epoch_seconds"]] == [1, 2, 3]
    summary = json.loads((live_b / "metrics.json").read_text())
    assert summary["step"] == 3 and summary["val_accuracy"] == a["val_accuracy"][-1][1]

    # a run that cannot resume (other settings) starts the curves afresh
    live, log = dvclive_logger(live_b)
    train_classifier(*demo, TrainConfig(**{**TINY, "epochs": 1}), checkpoint_dir=tmp_path / "b", log=log,
                     progress=False)
    live.end()
    assert [s for s, _ in _curves(live_b)["val_accuracy"]] == [1]


def test_changed_config_does_not_resume(tmp_path, demo):
    train_classifier(*demo, TrainConfig(**{**TINY, "epochs": 1}), checkpoint_dir=tmp_path, progress=False)
    seen = []
    train_classifier(*demo, TrainConfig(**{**TINY, "epochs": 2, "lr": 0.01}), checkpoint_dir=tmp_path,
                     log=lambda r, e: seen.append(e), progress=False)
    assert seen == [1, 2]


def test_model_selection_uses_val_best_epoch(demo):
    result = train_classifier(*demo, TrainConfig(**TINY), progress=False)
    best = max(result.history, key=lambda h: h["val_accuracy"])
    assert result.best_epoch == best["epoch"]
    assert result.best_val["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-5)


def test_eval_amp_predictions_stay_close_to_float32(demo, monkeypatch):
    """eval_amp runs val selection and the reported predictions in bf16 where that is fast; the
    probabilities must stay within bf16 rounding of float32, and the flag must reach autocast."""
    from classifiers import training

    x, y, xv, yv = demo
    model = train_classifier(x, y, xv, yv, TrainConfig(**TINY), progress=False).model
    monkeypatch.setattr(training, "bf16_is_fast", lambda device: True)  # exercise bf16 on any CPU
    p32 = training.predict_proba(model, xv, TrainConfig(**TINY))
    p16 = training.predict_proba(model, xv, TrainConfig(**TINY, eval_amp=True))
    assert p16.dtype == torch.float32 and torch.allclose(p16.sum(1), torch.ones(len(xv)), atol=1e-4)
    assert 0 < (p16 - p32).abs().max() < 0.05  # bf16 differs, but only by rounding
    assert (p16.argmax(1) == p32.argmax(1)).float().mean() >= 0.95


def test_time_budget_stops_training_and_still_selects_on_val(demo):
    result = train_classifier(*demo, TrainConfig(**{**TINY, "epochs": 50, "max_minutes": 0.002}), progress=False)
    assert len(result.history) < 50 and "time budget" in result.stopped
    assert result.best_epoch >= 1 and result.history[-1]["elapsed_minutes"] < 0.5


def test_step_budget_gives_every_training_set_size_the_same_updates(demo):
    """`steps` fixes the optimisation steps: a 4x larger set gets the same count, in `epochs` rounds."""
    x, y, xv, yv = demo
    cfg = TrainConfig(**{**TINY, "epochs": 2, "steps": 9})
    small = train_classifier(x[:60], y[:60], xv, yv, cfg, progress=False)
    large = train_classifier(x, y, xv, yv, cfg, progress=False)
    assert small.steps == large.steps == 10  # 2 rounds of ceil(9 / 2) steps
    assert len(small.history) == len(large.history) == 2  # one val selection per round
    assert train_classifier(x, y, xv, yv, TrainConfig(**{**TINY, "epochs": 2}), progress=False).steps == 2 * (210 // 32)


def test_step_rounds_walk_whole_passes_over_the_data():
    from classifiers.training import stream_of_passes

    rounds = [stream_of_passes(10, r * 4, 4, seed=3) for r in range(5)]  # 5 rounds of 4 = 2 passes over 10
    seen = torch.cat(rounds)
    assert torch.equal(seen[:10].sort().values, torch.arange(10))
    assert torch.equal(seen[10:].sort().values, torch.arange(10))
    assert torch.equal(stream_of_passes(10, 8, 4, seed=3), rounds[2])  # stateless: a resume continues it


def test_train_judge_and_evaluate_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "data: {source: demo, demo_per_class: [150, 150, 150, 150, 150, 150, 150]}\n"
        "judge: {arch: vgg_fer, width: 0.25, epochs: 8, batch_size: 32, optimizer: adamw, lr: 0.002, weight_decay: 0.01,"
        " tta: none, threads: 2, augment: {hflip: false, crop_padding: 0, rotation_deg: 0, scale: 0, brightness: 0,"
        " contrast: 0, erasing_p: 0}}\n")
    runner = CliRunner()
    assert runner.invoke(app, ["prepare"]).exit_code == 0
    result = runner.invoke(app, ["train-judge"])
    assert result.exit_code == 0, result.output
    m = json.loads(Path("metrics/judge.json").read_text())
    assert m["test"]["accuracy"] > 0.4  # 7 classes: chance is 0.14
    assert m["calibration"]["val_nll_after"] <= m["calibration"]["val_nll_before"] + 1e-9
    judge = Judge.load("models/judge/model.safetensors")
    x = torch.zeros(5, 1, 48, 48, dtype=torch.uint8)
    assert judge.features(x).shape == (5, judge.model.feature_dim)
    p = judge.probabilities(x)
    assert p.shape == (5, 7) and torch.allclose(p.sum(1), torch.ones(5))
    assert judge.temperature == pytest.approx(m["calibration"]["temperature"], rel=1e-3)

    result = runner.invoke(app, ["evaluate", "--model", "models/judge/model.safetensors", "--out", "ev",
                                 "--classes", "angry,happy,surprise", "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    ev = json.loads(Path("ev/metrics.json").read_text())
    assert ev["classes"] == ["angry", "happy", "surprise"] and ev["n"] == 45
    assert Path("ev/confusion.png").stat().st_size > 1000
    assert Path("ev/confusion.csv").read_text().count("\n") == 46

    result = runner.invoke(app, ["evaluate", "--model", "missing.safetensors"])
    assert result.exit_code == 2 and "missing.safetensors" in result.stderr


# --------------------------------------------------------------------------------------------------
# torchrun: a script that trains one or more jobs on fixed demo faces and saves, per job and rank,
# the final (val-selected) weights; a job may die (os._exit on rank 0, like a kill) after logging an epoch

DDP_SCRIPT = """
import json, os, sys
from pathlib import Path
import torch, torch.distributed as dist
from safetensors.torch import save_file
import classifiers.training as training
from classifiers.config import TrainConfig
from facedata.sources.demo_faces import draw_demo_faces

def without_batchnorm(model):  # BatchNorm normalises per rank: without it 1 and 2 processes compute the same
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                setattr(module, name, torch.nn.Identity())
    return model

x, y = draw_demo_faces(30, seed=1)
out = Path(sys.argv[1])
build = training.model_from_config
for job in json.loads(sys.argv[2]):
    training.model_from_config = (lambda cfg: without_batchnorm(build(cfg))) if job.get("no_bn") else build
    def log(row, epoch, die_at=job.get("die_at")):
        if epoch == die_at:
            os._exit(3)  # after logging this epoch, before its checkpoint
    result = training.train_classifier(x[:180], y[:180], x[180:], y[180:], TrainConfig(**job["cfg"]),
                                       checkpoint_dir=out / job["name"], log=log, progress=False)
    rank = dist.get_rank() if dist.is_initialized() else 0
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()},
              str(out / job["name"] / f"rank{rank}.safetensors"))
"""
DDP_TINY = dict(arch="compact_cnn", width=0.25, epochs=3, batch_size=32, lr=0.05, tta="none", threads=1, amp=False)
# everything random off: dropout, augmentation (BatchNorm too, in the script), so 2 ranks x 16 = 1 x 32
DDP_PLAIN = dict(DDP_TINY, dropout=0.0, lr=0.01, augment=dict(hflip=False, crop_padding=0, rotation_deg=0, scale=0,
                                                              brightness=0, contrast=0, erasing_p=0))


def run_ddp_jobs(out: Path, jobs: list[dict], nproc: int) -> subprocess.CompletedProcess:
    import os
    import sys

    out.mkdir(parents=True, exist_ok=True)
    script = out / "ddp_classifier.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), str(script), str(out), json.dumps(jobs)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k}"


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """One `torchrun --nproc_per_node 2` (gloo, CPU): the plain job and the real one (BatchNorm, dropout,
    augmentation), each to its end."""
    out = tmp_path_factory.mktemp("ddp")
    proc = run_ddp_jobs(out, [{"name": "plain", "cfg": DDP_PLAIN, "no_bn": True}, {"name": "real", "cfg": DDP_TINY}], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_torchrun_two_processes_match_one(two_process_runs, tmp_path):
    """Data-parallel training is one model: after training every rank holds the same weights (BatchNorm
    statistics included), and without per-rank randomness or BatchNorm, 2 ranks of 16 images train the
    weights 1 process of 32 does (up to float summation order). A missing, summed-not-averaged or
    wrongly sliced gradient all-reduce fails one of the two."""
    for job in ("plain", "real"):
        assert_same_weights(load_weights(two_process_runs / job / "rank0.safetensors"),
                            load_weights(two_process_runs / job / "rank1.safetensors"), f"{job}: rank 0 vs rank 1")
    one = run_ddp_jobs(tmp_path, [{"name": "plain", "cfg": DDP_PLAIN, "no_bn": True}], 1)
    assert one.returncode == 0, one.stderr[-3000:]
    from runtime.checkpoint import load_checkpoint, unprefixed

    last = {n: load_checkpoint(d / "plain" / "last.safetensors") for n, d in (("one", tmp_path), ("two", two_process_runs))}
    assert last["one"][1]["step"] == last["two"][1]["step"] == 15  # 3 epochs of 180 // 32 global batches
    a, b = unprefixed("model", last["one"][0]), unprefixed("model", last["two"][0])  # the last epoch, not the val pick
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (k, float((a[k] - b[k]).abs().max()))


@pytest.mark.slow
def test_torchrun_resume_restores_every_ranks_augmentation(two_process_runs, tmp_path):
    """A 2-process run that dies after logging epoch 2 (checkpoint at epoch 1) and is started again ends
    with the weights of the uninterrupted run, on both ranks: each rank must continue its own
    augmentation stream, not rank 0's."""
    job = {"name": "real", "cfg": DDP_TINY}
    died = run_ddp_jobs(tmp_path, [{**job, "die_at": 2}], 2)
    assert died.returncode != 0 and not (tmp_path / "real" / "rank0.safetensors").exists()
    from runtime.checkpoint import load_checkpoint

    tensors, meta = load_checkpoint(tmp_path / "real" / "last.safetensors")
    assert meta["epoch"] == 0 and {"rng.aug0", "rng.aug1"} <= tensors.keys()
    assert not torch.equal(tensors["rng.aug0"], tensors["rng.aug1"])
    resumed = run_ddp_jobs(tmp_path, [job], 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming classifier training from" in resumed.stdout + resumed.stderr
    for rank in (0, 1):
        assert_same_weights(load_weights(two_process_runs / "real" / f"rank{rank}.safetensors"),
                            load_weights(tmp_path / "real" / f"rank{rank}.safetensors"), f"rank {rank}")
