"""The conditional GAN: networks, DiffAugment, KID, the training loop (resume, NaN guard, budget),
exact regeneration, the train_generator stage, and a 2-process torchrun step.

Tiny networks on ~200 demo faces and a randomly initialised judge keep each test to seconds."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

import generators.gan_training as gan_training
from classifiers.architectures import model_from_config
from classifiers.config import TrainConfig
from classifiers.judge import Judge
from facedata.prepared import LabelledImages, save_split
from facedata.sources.demo_faces import draw_demo_faces
from generators.config import GanConfig, GeneratorConfig
from generators.diffaugment import cutout, diff_augment, translation
from generators.gan_networks import Generator, PlainDiscriminator, ProjectedDiscriminator
from generators.gan_sampling import load_generator, noise_for_seeds, sample, save_generator
from generators.gan_training import GanDivergedError, mode_seeking_loss, train_gan
from generators.registry import load_sampler
from generators.sampling import generator_sha256
from quality.probe import kid
from runtime.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TINY = dict(z_dim=16, g_channels=[16, 16, 8, 8], judge_guidance=0.0, d_channels=[8, 8, 16, 16], d_head_channels=8, batch_size=8,
            steps=4, log_every=1, sample_every=2, quality_every=2, quality_samples=14, checkpoint_every=2,
            threads=1, device="cpu")


def tiny(**over) -> GanConfig:
    return GanConfig(**{**TINY, **over})


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread is fastest


@pytest.fixture(scope="module")
def demo() -> tuple[torch.Tensor, torch.Tensor]:
    return draw_demo_faces([40, 10, 30, 40, 30, 30, 30], seed=5)


@pytest.fixture(scope="module")
def judge() -> Judge:
    torch.manual_seed(0)
    cfg = TrainConfig(arch="vgg_fer", width=0.125, dropout=0.0)
    return Judge(model_from_config(cfg), cfg)


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------
# config and networks


def test_config_rejects_unknown_and_bad_keys():
    with pytest.raises(ValidationError, match="g_lrr"):
        GanConfig(g_lrr=1e-3)
    with pytest.raises(ValidationError, match="unknown DiffAugment op 'rotate'"):
        GanConfig(diffaug="translation,rotate")
    with pytest.raises(ValidationError, match="4 positive channel counts"):
        GanConfig(g_channels=[8, 8])
    cfg = GeneratorConfig(kind="gan", gan={"steps": 10})
    assert cfg.gan.steps == 10 and cfg.to_dict()["gan"]["steps"] == 10


def test_generator_config_validates_diffusion_section_lazily():
    pytest.importorskip("diffusers")
    cfg = GeneratorConfig(kind="diffusion", diffusion={"steps": 3})
    assert cfg.diffusion.steps == 3
    with pytest.raises(ValidationError, match="no_such_key"):
        GeneratorConfig(kind="diffusion", diffusion={"no_such_key": 1})


def test_shapes_and_judge_kept_out_of_d(judge):
    g = Generator(16, [16, 16, 8, 8])
    z, y = torch.randn(5, 16), torch.arange(5)
    x = g(z, y)
    assert x.shape == (5, 1, 48, 48) and x.min() >= -1 and x.max() <= 1
    plain = PlainDiscriminator([8, 8, 16, 16])
    assert plain(x, y).shape == (5,)
    proj = ProjectedDiscriminator(judge.model, 8)
    out, logits = proj.forward_with_logits(x, y)
    assert out.shape == (5,) and logits.shape == (5, 7)
    assert not any(k.startswith("judge") for k in proj.state_dict())
    judge_ids = {id(p) for p in judge.model.parameters()}
    assert not judge_ids & {id(p) for p in proj.parameters()}
    proj.train()
    assert not judge.model.training  # the judge's BN/dropout stay frozen when D trains
    out.sum().backward()
    assert all(p.grad is None for p in judge.model.parameters())


def test_different_labels_give_different_images_for_the_same_noise():
    torch.manual_seed(0)
    g = Generator(16, [16, 16, 8, 8]).eval()
    with torch.no_grad():  # make the class embeddings matter as much as after training
        for m in g.modules():
            if isinstance(m, torch.nn.Embedding):
                m.weight.normal_(1.0, 0.5)
    images = sample(g, torch.arange(7), [123] * 7)
    assert images.shape == (7, 1, 48, 48) and images.dtype == torch.uint8
    for a in range(7):
        for b in range(a + 1, 7):
            assert not torch.equal(images[a], images[b]), (a, b)
    same = sample(g, torch.zeros(2, dtype=torch.long), [5, 5])
    assert torch.equal(same[0], same[1])
    assert torch.equal(noise_for_seeds([123], 16)[0], noise_for_seeds([123], 16)[0])


# --------------------------------------------------------------------------------------------------
# DiffAugment and KID


def test_diffaugment_is_per_image_differentiable_and_seeded():
    leaf = torch.rand(6, 1, 48, 48, requires_grad=True)
    x = leaf * 2 - 1
    a = diff_augment(x, "translation,cutout,color", torch.Generator().manual_seed(1))
    b = diff_augment(x, "translation,cutout,color", torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    a.sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    ones = torch.ones(4, 1, 48, 48)
    cut = cutout(ones, torch.Generator().manual_seed(0))
    zeros = (cut == 0).sum(dim=(1, 2, 3))
    assert ((zeros > 0) & (zeros <= 24 * 24)).all()  # one half-size square each (may hang over the edge)
    shifted = translation(ones, torch.Generator().manual_seed(3))
    assert set(shifted.unique().tolist()) <= {0.0, 1.0}  # pure shifts with zero fill, no interpolation
    assert not torch.equal(translation(torch.rand(8, 1, 48, 48), torch.Generator().manual_seed(3))[0],
                           translation(torch.rand(8, 1, 48, 48), torch.Generator().manual_seed(3))[1])


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 16, generator=g), torch.randn(400, 16, generator=g)
    same, shifted = kid(a, b, subset_size=200), kid(a, b + 0.3, subset_size=200)
    assert abs(same) < 0.05 and shifted > 0.2 and shifted > 10 * abs(same)


# --------------------------------------------------------------------------------------------------
# training loop


@pytest.mark.parametrize("d_kind", ["projected", "plain"])
def test_training_runs_logs_and_samples(demo, judge, d_kind):
    rows, grids = [], []
    cfg = tiny(d_kind=d_kind, judge_guidance=0.1, r1_gamma=1.0, r1_every=2)
    result = train_gan(*demo, cfg, judge=judge, log=lambda r, s: rows.append((s, r)),
                       on_samples=lambda g, s: grids.append((s, g)), progress=False)
    assert result.steps == 4 and result.stopped == "completed"
    losses = [r for _, r in rows if "loss_d" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"]])).all() for r in losses)
    assert "loss_cls" in losses[0]
    quality = [r for _, r in rows if "gan_test" in r]
    assert [s for s, r in rows if "gan_test" in r] == [2, 4] and "gan_test_disgust" in quality[0]
    assert 0 <= result.quality["gan_test"]["overall"] <= 1 and set(result.quality["gan_test"]["per_class"]) == {
        "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert [s for s, _ in grids][:2] == [2, 4] and grids[0][1].shape == (56, 1, 48, 48)
    assert not result.generator.training


def test_plain_d_trains_without_a_judge(demo):
    result = train_gan(*demo, tiny(d_kind="plain", steps=2), progress=False)
    assert result.steps == 2 and result.quality == {}
    with pytest.raises(ValueError, match="needs a judge|judge is needed"):
        train_gan(*demo, tiny(steps=1), progress=False)


def test_class_balanced_real_batches(demo, judge, monkeypatch):
    seen = []
    real_forward = ProjectedDiscriminator.forward

    def spy(self, x, y):
        if len(y) == 2 * TINY["batch_size"]:
            seen.append(y[: len(y) // 2].clone())
        return real_forward(self, x, y)

    monkeypatch.setattr(ProjectedDiscriminator, "forward", spy)
    images, labels = demo
    train_gan(images, labels, tiny(steps=40, batch_size=16, quality_every=1000, sample_every=1000),
              judge=judge, progress=False)
    drawn = torch.bincount(torch.cat(seen), minlength=7).float()
    share = drawn / drawn.sum()
    assert share[1] > 0.09  # disgust is 1/21 of the data, ~1/7 of the batches


def test_mode_seeking_loss_punishes_noise_that_changes_nothing():
    za, zb = torch.zeros(4, 16), torch.ones(4, 16)
    a = torch.rand(4, 1, 48, 48)
    collapsed = mode_seeking_loss(a, a.clone(), za, zb)
    diverse = mode_seeking_loss(a, 1 - a, za, zb)
    assert collapsed > 1e4 and diverse < 10 and torch.isfinite(collapsed)
    # exactly the paper's ratio: mean |a - b| / mean |za - zb|
    assert torch.allclose(diverse, 1 / ((a - (1 - a)).abs().mean() / 1.0 + 1e-5))


def test_mode_seeking_draws_fakes_in_same_label_pairs_and_logs_its_loss(demo, judge, monkeypatch):
    fake_labels, rows = [], []
    real_forward = ProjectedDiscriminator.forward

    def spy(self, x, y):
        if len(y) == 2 * TINY["batch_size"]:
            fake_labels.append(y[len(y) // 2:].clone())
        return real_forward(self, x, y)

    monkeypatch.setattr(ProjectedDiscriminator, "forward", spy)
    result = train_gan(*demo, tiny(mode_seeking=1.0, steps=3), judge=judge, log=lambda r, s: rows.append(r),
                       progress=False)
    assert result.steps == 3 and fake_labels
    half = TINY["batch_size"] // 2
    assert all(torch.equal(y[:half], y[half:2 * half]) for y in fake_labels)
    ms = [r["loss_ms"] for r in rows if "loss_ms" in r]
    assert len(ms) == 3 and all(0 < v < 1e4 for v in ms)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_resume_after_kill_matches_an_uninterrupted_run(demo, judge, tmp_path):
    cfg = tiny(steps=6, checkpoint_every=2, quality_every=3, sample_every=1000)
    straight = train_gan(*demo, cfg, judge=judge, progress=False)

    class Killed(Exception):
        pass

    def kill_at_step_5(row, step):  # after the step-4 checkpoint, before the next one
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train_gan(*demo, cfg, judge=judge, checkpoint_dir=tmp_path, log=kill_at_step_5, progress=False)
    with safe_open(str(tmp_path / "last.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["meta"])["step"] == 4
    resumed = train_gan(*demo, cfg, judge=judge, checkpoint_dir=tmp_path, progress=False)
    assert resumed.steps == straight.steps == 6
    a, b = weights(straight.generator), weights(resumed.generator)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.quality == straight.quality
    # a finished run started again does no more steps
    again = train_gan(*demo, cfg, judge=judge, checkpoint_dir=tmp_path, progress=False)
    assert again.steps == 6
    # training longer continues from the checkpoint ("steps" is not part of the fingerprint)
    longer = train_gan(*demo, tiny(steps=7, checkpoint_every=2, quality_every=3, sample_every=1000), judge=judge,
                       checkpoint_dir=tmp_path, progress=False)
    assert longer.steps == 7


def _curves(live_dir: Path) -> dict[str, list[tuple[int, str]]]:
    out = {}
    for tsv in sorted((live_dir / "plots" / "metrics").glob("*.tsv")):
        out[tsv.stem] = [tuple(line.split("\t")) for line in tsv.read_text().splitlines()[1:]]
    return out


def test_resumed_run_keeps_its_dvclive_curves_once_per_step(demo, judge, tmp_path):
    """Killed after logging step 5 (checkpoint at 4): the resumed run keeps steps 1-4 of the curves, drops
    the orphaned step 5 and logs 5 and 6 again, so the curves equal an uninterrupted run's."""
    from runtime.live import dvclive_logger

    cfg = tiny(steps=6, checkpoint_every=2, quality_every=3, sample_every=1000)
    live, log = dvclive_logger(tmp_path / "live_a")
    train_gan(*demo, cfg, judge=judge, checkpoint_dir=tmp_path / "a", log=log, progress=False)
    live.end()

    class Killed(Exception):
        pass

    _, log = dvclive_logger(tmp_path / "live_b")

    def log_then_die_at_step_5(row, step):
        log(row, step)
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train_gan(*demo, cfg, judge=judge, checkpoint_dir=tmp_path / "b", log=log_then_die_at_step_5, progress=False)
    live, log = dvclive_logger(tmp_path / "live_b")
    train_gan(*demo, cfg, judge=judge, checkpoint_dir=tmp_path / "b", log=log, progress=False)
    live.end()
    a, b = _curves(tmp_path / "live_a"), _curves(tmp_path / "live_b")
    assert a.keys() == b.keys() and {"loss_d", "gan_test", "kid"} <= b.keys()
    assert [int(s) for s, _ in b["loss_d"]] == [1, 2, 3, 4, 5, 6]
    assert [int(s) for s, _ in b["kid"]] == [3, 6]
    for name in a:
        if name != "steps_per_s":  # timing
            assert b[name] == a[name], name


def test_nan_guard_stops_with_a_clear_message_and_keeps_the_checkpoint(demo, judge, tmp_path, monkeypatch):
    cfg = tiny(steps=2, checkpoint_every=2)
    train_gan(*demo, cfg, judge=judge, checkpoint_dir=tmp_path, progress=False)
    good = file_hash(tmp_path / "last.safetensors")

    real = gan_training.to_generator_range
    monkeypatch.setattr(gan_training, "to_generator_range", lambda x: real(x) * float("nan"))
    with pytest.raises(GanDivergedError, match=r"diverged at step 3 .*last good checkpoint \(step 2\) is kept"):
        train_gan(*demo, tiny(steps=4, checkpoint_every=2), judge=judge, checkpoint_dir=tmp_path, progress=False)
    assert file_hash(tmp_path / "last.safetensors") == good


def test_nan_weights_are_never_checkpointed(demo, judge, tmp_path, monkeypatch):
    train_gan(*demo, tiny(steps=2), judge=judge, checkpoint_dir=tmp_path, progress=False)
    good = file_hash(tmp_path / "last.safetensors")
    real_step = torch.optim.Adam.step

    def poisoned(self, *a, **k):  # finite losses, but an update that leaves NaN weights behind
        out = real_step(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    with pytest.raises(GanDivergedError, match="last good checkpoint"):
        train_gan(*demo, tiny(steps=4), judge=judge, checkpoint_dir=tmp_path, progress=False)
    assert file_hash(tmp_path / "last.safetensors") == good


def test_time_budget_stops_cleanly_with_a_checkpoint(demo, judge, tmp_path):
    result = train_gan(*demo, tiny(steps=1000, max_minutes=1e-4), judge=judge, checkpoint_dir=tmp_path, progress=False)
    assert result.steps < 1000 and "time budget" in result.stopped
    assert (tmp_path / "last.safetensors").is_file()


# --------------------------------------------------------------------------------------------------
# sampling and regeneration


def test_exact_regeneration_from_checkpoint_label_and_seed(demo, judge, tmp_path):
    result = train_gan(*demo, tiny(steps=2), judge=judge, progress=False)
    path = tmp_path / "model"
    save_generator(path, result.generator, tiny(steps=2))
    assert sorted(p.name for p in path.iterdir()) == ["fersynth.json", "generator.safetensors"]  # weights + JSON config
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 3, 3, 1])
    seeds = torch.arange(10) + 777
    batch = sample(result.generator, labels, seeds, batch_size=64)
    sampler = load_sampler(path)
    assert sampler.kind == "gan" and sampler.sha256 == generator_sha256(path)
    for i in (0, 4, 9):  # alone, from the file, in another batch size
        alone = sampler.sample(labels[i : i + 1], seeds[i : i + 1], batch_size=1)
        assert torch.equal(alone[0], batch[i])
    mixed = sampler.sample(labels.flip(0), seeds.flip(0))
    assert torch.equal(mixed.flip(0), batch)
    truncated = noise_for_seeds(seeds, 16, truncation=0.5)
    assert truncated.abs().max() <= 0.5
    g, meta, _ = load_generator(path)
    assert meta["kind"] == "gan" and meta["label_names"][1] == "disgust"


def test_load_sampler_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no generator here"):
        load_sampler(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "fersynth.json").write_text("{not json")
    with pytest.raises(UserError, match="not readable"):
        load_sampler(tmp_path / "bad")
    (tmp_path / "bad" / "fersynth.json").write_text('{"kind": "gan", "config": {}}')
    (tmp_path / "bad" / "generator.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable"):
        load_sampler(tmp_path / "bad")


# --------------------------------------------------------------------------------------------------
# the train_generator stage


def _prepared(tmp_path: Path, demo) -> Path:
    data_dir = tmp_path / "prepared"
    save_split(data_dir / "train.safetensors", LabelledImages(*demo))
    return data_dir


def test_run_train_generator_writes_generator_samples_and_metrics(demo, judge, tmp_path):
    from pipelines.train_generator import run_train_generator

    data_dir = _prepared(tmp_path, demo)
    judge_path = tmp_path / "judge.safetensors"
    judge.save(judge_path)
    out = tmp_path / "models" / "generator"
    metrics_path = tmp_path / "metrics" / "generator.json"
    cfg = GeneratorConfig(kind="gan", gan=TINY)
    metrics = run_train_generator(cfg, data_dir, judge_path, out, tmp_path / "live", metrics_path, progress=False)
    assert (out / "model" / "generator.safetensors").is_file() and (out / "checkpoints" / "last.safetensors").is_file()
    pngs = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert pngs == ["final.png", "step_000002.png", "step_000004.png"]
    from PIL import Image

    with Image.open(out / "samples" / "final.png") as grid:
        assert grid.size == (2 * (8 * 50 + 2), 2 * (7 * 50 + 2))  # 7 rows x 8 columns, 2x upscaled
    on_disk = json.loads(metrics_path.read_text())
    assert on_disk["steps"] == 4 and on_disk["kind"] == "gan" and set(on_disk["gan_test"]) == {"overall", "per_class"}
    assert on_disk["kid"] == metrics["kid"] and on_disk["steps_per_s"] > 0
    assert load_sampler(out / "model").kind == "gan"
    assert (tmp_path / "live" / "metrics.json").is_file()


def test_run_train_generator_with_the_diffusion_kind(demo, judge, tmp_path):
    pytest.importorskip("diffusers")
    from pipelines.train_generator import run_train_generator

    diffusion = dict(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
                     batch_size=8, steps=4, log_every=2, checkpoint_every=2, num_inference_steps=2,
                     quality_inference_steps=2, grid_per_class=2, quality_per_class=2, sample_every=1000,
                     quality_every=1000, sample_unet_batch=8, threads=1, device="cpu")
    judge_path = tmp_path / "judge.safetensors"
    judge.save(judge_path)
    out = tmp_path / "generator"
    metrics = run_train_generator(GeneratorConfig(kind="diffusion", diffusion=diffusion), _prepared(tmp_path, demo),
                            judge_path, out, None, tmp_path / "generator.json", progress=False)
    assert metrics["kind"] == "diffusion" and metrics["steps"] == 4 and "kid" in metrics
    assert load_sampler(out / "model").kind == "diffusion"
    from diffusers import UNet2DModel

    assert UNet2DModel.from_pretrained(out / "model", subfolder="unet").config.num_class_embeds == 8  # diffusers alone
    assert (out / "samples" / "final.png").is_file()


def test_run_train_generator_user_errors(demo, tmp_path, monkeypatch):
    from pipelines.train_generator import run_train_generator

    data_dir = _prepared(tmp_path, demo)
    with pytest.raises(UserError, match="judge not found"):
        run_train_generator(GeneratorConfig(gan=TINY), data_dir, tmp_path / "missing.safetensors", tmp_path / "g", None,
                      tmp_path / "m.json", progress=False)
    with pytest.raises(UserError, match="need the judge"):
        run_train_generator(GeneratorConfig(gan=TINY), data_dir, None, tmp_path / "g", None, tmp_path / "m.json",
                      progress=False)
    monkeypatch.setattr(gan_training, "to_generator_range", lambda x: x.float() * float("nan"))
    with pytest.raises(UserError, match="diverged"):
        run_train_generator(GeneratorConfig(gan={**TINY, "d_kind": "plain"}), data_dir, None, tmp_path / "g", None,
                      tmp_path / "m.json", progress=False)
    assert not (tmp_path / "m.json").exists()


# --------------------------------------------------------------------------------------------------
# torchrun


@pytest.mark.slow
def test_torchrun_two_process_gan_steps_on_cpu(tmp_path):
    script = tmp_path / "ddp_gan.py"
    script.write_text(textwrap.dedent(f"""
        import torch, torch.distributed as dist
        from generators.config import GanConfig
        from generators.gan_training import train_gan
        from facedata.sources.demo_faces import draw_demo_faces
        images, labels = draw_demo_faces(8, seed=1)
        cfg = GanConfig(**{dict(TINY, d_kind="plain", steps=3, batch_size=8, checkpoint_every=3)!r})
        result = train_gan(images, labels, cfg, checkpoint_dir=__import__("pathlib").Path({str(tmp_path)!r}),
                           progress=False)
        flat = torch.cat([p.detach().reshape(-1) for p in result.generator.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        assert all(torch.equal(gathered[0], g) for g in gathered), "ranks disagree"
        if dist.get_rank() == 0:
            print("OK", dist.get_world_size(), result.steps, flush=True)
        dist.destroy_process_group()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(torchrun, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK 2 3" in proc.stdout
    assert (tmp_path / "last.safetensors").is_file()
