"""Diffusion generator: shapes, training, conditioning, exact regeneration, resume, NaN guard, save/load.

A tiny UNet (three levels, 8/16/16 channels, attention at 12x12; the 48x48 UNet unless a test
says patch_size=2) on ~200 demo faces keeps every test to a few seconds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError

import generators.diffusion_training as diffusion
from facedata.sources.demo_faces import draw_demo_faces
from generators.diffusion_model import NULL_CLASS, build_unet, denoise
from generators.diffusion_sampling import DiffusionSampler, load_diffusion_sampler, save_diffusion_sampler
from generators.diffusion_training import DiffusionConfig, train_diffusion
from runtime.checkpoint import load_checkpoint
from runtime.errors import UserError

TINY = dict(patch_size=1, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
            batch_size=8, lr=1e-3, lr_warmup_steps=2, steps=8, log_every=2, checkpoint_every=4,
            num_inference_steps=4, quality_inference_steps=2, grid_per_class=2, quality_per_class=2,
            sample_every=1000, quality_every=1000, sample_unet_batch=8, threads=1, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread is fastest


@pytest.fixture(scope="module")
def demo():
    return draw_demo_faces(29, seed=3)  # 203 faces, 29 per expression


@pytest.fixture(scope="module")
def trained(demo):
    """A tiny model trained a little, shared by the sampling tests."""
    return train_diffusion(*demo, DiffusionConfig(**{**TINY, "steps": 40}), progress=False)


def cfg(**over) -> DiffusionConfig:
    return DiffusionConfig(**{**TINY, **over})


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_unet_forward_backward_shapes():
    unet = build_unet(cfg())
    x = torch.randn(3, 1, 48, 48)
    out = unet(x, torch.tensor([0, 500, 999]), class_labels=torch.tensor([0, 6, NULL_CLASS])).sample
    assert out.shape == (3, 1, 48, 48)
    out.square().mean().backward()
    missing = [n for n, p in unet.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert unet.class_embedding.num_embeddings == 8  # 7 expressions + the null class
    # four halvings still give integer sizes at 48 (48 -> 3); a fifth would not
    deep = build_unet(cfg(block_out_channels=(16, 16, 16, 16, 16), attention_levels=1))
    assert deep(x[:1], torch.tensor([10]), class_labels=torch.tensor([2])).sample.shape == (1, 1, 48, 48)
    with pytest.raises(ValidationError, match="levels"):
        cfg(block_out_channels=(16,) * 6)
    # patch_size 2: the UNet sees 24x24x4 (pixel_unshuffle), the caller still 48x48x1
    patched = cfg(patch_size=2)
    unet2 = build_unet(patched)
    assert unet2.config.in_channels == 4 and unet2.config.sample_size == 24
    assert denoise(unet2, x, torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]), 2).shape == (3, 1, 48, 48)
    with pytest.raises(ValidationError, match="levels"):
        cfg(patch_size=2, block_out_channels=(16,) * 5)
    with pytest.raises(ValidationError, match="norm_num_groups"):
        cfg(block_out_channels=(12, 32))
    with pytest.raises(ValidationError, match="extra"):
        cfg(guidance=2.0)


def test_training_on_demo_faces_gives_finite_falling_loss(trained):
    losses = [row["loss"] for row in trained.history if "loss" in row]
    assert trained.steps == 40 and trained.stopped == "completed"
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert not trained.ema_model.training


def test_conditioning_changes_samples_and_guidance_zero_ignores_label(trained):
    sampler = DiffusionSampler(trained.ema_model, cfg())
    seeds = torch.full((7,), 11)
    guided = sampler.sample(torch.arange(7), seeds, guidance_scale=3.0)
    assert guided.shape == (7, 1, 48, 48) and guided.dtype == torch.uint8
    per_label = [(guided[i].float() - guided[0].float()).abs().mean() for i in range(1, 7)]
    assert min(per_label) > 0.5, per_label  # every label moves the image, same noise
    unguided = sampler.sample(torch.arange(7), seeds, guidance_scale=0.0)  # null class only
    assert (unguided == unguided[:1]).all()


@pytest.mark.parametrize("scheduler,eta", [("dpm_solver", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_exact_regeneration_from_seed_regardless_of_batch(trained, scheduler, eta):
    sampler = DiffusionSampler(trained.ema_model, cfg(sample_scheduler=scheduler, ddim_eta=eta))
    check_regeneration(sampler)


def test_exact_regeneration_patch_size_2():
    torch.manual_seed(0)
    check_regeneration(DiffusionSampler(build_unet(cfg(patch_size=2)), cfg(patch_size=2)))


def check_regeneration(sampler):
    labels, seeds = torch.tensor([3, 0, 5, 1, 6]), torch.tensor([7, 123456789, 7, 42, 2**40])
    batch = sampler.sample(labels, seeds, batch_size=3)  # chunks of 3 and 2
    for i in range(len(labels)):
        alone = sampler.sample(labels[i : i + 1], seeds[i : i + 1])
        assert torch.equal(alone[0], batch[i]), i
    shuffled = sampler.sample(labels.flip(0), seeds.flip(0))
    assert torch.equal(shuffled.flip(0), batch)
    other = sampler.sample(labels, seeds + 1)
    assert all(not torch.equal(other[i], batch[i]) for i in range(len(labels)))


def test_ddim_eta_noise_is_used():
    unet = build_unet(cfg())
    labels, seeds = torch.tensor([1, 2]), torch.tensor([5, 6])
    a = DiffusionSampler(unet, cfg(sample_scheduler="ddim", ddim_eta=0.0)).sample(labels, seeds)
    b = DiffusionSampler(unet, cfg(sample_scheduler="ddim", ddim_eta=1.0)).sample(labels, seeds)
    assert not torch.equal(a, b)


class Interrupt(Exception):
    pass


def test_resume_after_interrupt_matches_straight_run(tmp_path, demo):
    straight = train_diffusion(*demo, cfg(), checkpoint_dir=tmp_path / "a", progress=False)

    def kill_at_6(row, step):
        if step == 6:
            raise Interrupt  # like a kill at step 6: the step-4 checkpoint is on disk
    with pytest.raises(Interrupt):
        train_diffusion(*demo, cfg(), checkpoint_dir=tmp_path / "b", log=kill_at_6, progress=False)
    assert load_checkpoint(tmp_path / "b" / "last.safetensors")[1]["step"] == 4
    seen = []
    resumed = train_diffusion(*demo, cfg(), checkpoint_dir=tmp_path / "b", log=lambda r, s: seen.append(s), progress=False)
    assert seen == [6, 8], "the resumed run must continue from step 4, not restart"
    assert resumed.steps == straight.steps == 8
    for (k, a), b in zip(weights(straight.ema_model).items(), weights(resumed.ema_model).values()):
        assert torch.allclose(a, b, atol=1e-6), k
    drop = {"seconds_per_step", "elapsed_minutes"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.history] == \
           [{k: v for k, v in r.items() if k not in drop} for r in straight.history]
    train_log = load_checkpoint(tmp_path / "b" / "last.safetensors")[1]
    assert train_log["step"] == 8


def test_training_longer_resumes_and_other_config_restarts(tmp_path, demo):
    straight = train_diffusion(*demo, cfg(), progress=False)
    train_diffusion(*demo, cfg(steps=4), checkpoint_dir=tmp_path, progress=False)
    seen = []
    longer = train_diffusion(*demo, cfg(steps=8), checkpoint_dir=tmp_path, log=lambda r, s: seen.append(s), progress=False)
    assert seen == [6, 8]  # more steps continue the same trajectory
    for (k, a), b in zip(weights(straight.ema_model).items(), weights(longer.ema_model).values()):
        assert torch.allclose(a, b, atol=1e-6), k
    seen.clear()
    train_diffusion(*demo, cfg(steps=4, lr=5e-4), checkpoint_dir=tmp_path, log=lambda r, s: seen.append(s), progress=False)
    assert seen == [2, 4]  # a different lr is a different run: starts from scratch


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, demo, monkeypatch):
    real_loss, calls = diffusion.diffusion_loss, []

    def loss_that_goes_nan(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) == 6 else loss
    monkeypatch.setattr(diffusion, "diffusion_loss", loss_that_goes_nan)
    with pytest.raises(FloatingPointError, match=r"diverged at step 6 \(loss nan\).*last good checkpoint"):
        train_diffusion(*demo, cfg(), checkpoint_dir=tmp_path, progress=False)
    tensors, meta = load_checkpoint(tmp_path / "last.safetensors")
    assert meta["step"] == 4
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_samples_grid_and_gan_test_reading(demo):
    class AlwaysHappy:  # a stub judge: says "happy" (3) to everything
        def probabilities(self, images):
            assert images.dtype == torch.uint8 and images.shape[1:] == (1, 48, 48)
            return torch.nn.functional.one_hot(torch.full((len(images),), 3), 7).float()
    grids, rows = [], []
    train_diffusion(*demo, cfg(steps=4, sample_every=2, quality_every=4, patch_size=2), judge=AlwaysHappy(),
                    on_samples=lambda g, s: grids.append((s, g)), log=lambda r, s: rows.append(r), progress=False)
    assert [s for s, _ in grids] == [2, 4]
    grid = grids[-1][1]
    assert grid.shape == (7 * 2, 1, 48, 48) and grid.dtype == torch.uint8
    assert rows[-1]["gan_test"] == pytest.approx(1 / 7, abs=1e-4)
    assert rows[-1]["gan_test_happy"] == 1.0 and rows[-1]["gan_test_sad"] == 0.0


def test_time_budget_stops_early(demo):
    result = train_diffusion(*demo, cfg(steps=10_000, max_minutes=0.02), progress=False)
    assert 0 < result.steps < 10_000 and result.stopped.startswith("time budget")


def test_sampler_saves_in_diffusers_layout_and_loads_without_fersynth(tmp_path, trained):
    """The generator folder is diffusers' own: UNet2DModel.from_pretrained and the scheduler's
    from_pretrained read it, and sampling with those objects alone gives fersynth's images."""
    from diffusers import DDIMScheduler, UNet2DModel

    config = cfg(guidance_scale=1.5, sample_scheduler="ddim")
    folder = tmp_path / "model"
    save_diffusion_sampler(folder, trained.ema_model, config)
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == {
        "fersynth.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"}
    meta = json.loads((folder / "fersynth.json").read_text())
    assert meta["kind"] == "diffusion" and meta["config"]["guidance_scale"] == 1.5 and meta["class_labels"]["null_class"] == 7

    unet = UNet2DModel.from_pretrained(folder, subfolder="unet")  # what a diffusers user writes
    assert unet.config.num_class_embeds == 8
    for name, tensor in trained.ema_model.state_dict().items():
        assert torch.equal(unet.state_dict()[name], tensor), name
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    assert scheduler.config.prediction_type == config.prediction_type and scheduler.config.timestep_spacing == "trailing"

    loaded = load_diffusion_sampler(folder)
    assert loaded.kind == "diffusion" and loaded.cfg == config
    labels, seeds = torch.tensor([0, 4]), torch.tensor([1, 2])
    assert torch.equal(loaded.sample(labels, seeds), DiffusionSampler(trained.ema_model, config).sample(labels, seeds))
    assert torch.equal(DiffusionSampler(unet, config).sample(labels, seeds), loaded.sample(labels, seeds))

    (tmp_path / "gan").mkdir()
    (tmp_path / "gan" / "fersynth.json").write_text('{"kind": "gan"}')
    with pytest.raises(UserError, match="not a diffusion generator"):
        load_diffusion_sampler(tmp_path / "gan")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "fersynth.json").write_text('{"kind": "diffusion", "config": {}}')
    (tmp_path / "junk" / "unet").mkdir()
    with pytest.raises(UserError, match="junk/unet"):
        load_diffusion_sampler(tmp_path / "junk")


def test_sdedit_changes_the_face_keeps_its_identity_and_regenerates_exactly(trained, demo):
    """An edit moves toward another expression but stays nearer its own source than any other real face
    does, more so at lower strength; (source, label, seed, strength) gives the same image in any batch."""
    from quality.scores import pixel_copy_distance

    sampler = DiffusionSampler(trained.ema_model, cfg())
    images, labels = demo
    src, targets, seeds = images[:28], (labels[:28] + 3) % 7, torch.arange(28) + 500
    edits = sampler.edit(src, targets, seeds, strength=0.5)
    assert edits.shape == src.shape and edits.dtype == torch.uint8
    assert torch.equal(edits[5:9], sampler.edit(src[5:9], targets[5:9], seeds[5:9], strength=0.5, batch_size=3))
    own = pixel_copy_distance(edits, src, max_shift=0)
    other = pixel_copy_distance(edits, src.roll(7, 0), max_shift=0)  # another real face of the same expression
    assert (own > 0.05).all(), own  # changed
    assert own.mean() < 0.8 * other.mean(), (own.mean(), other.mean())  # ... and still its source's face
    weak = pixel_copy_distance(sampler.edit(src, targets, seeds, strength=0.2), src, max_shift=0)
    assert weak.mean() < own.mean()
    with pytest.raises(ValueError, match="strength"):
        sampler.edit(src[:1], targets[:1], seeds[:1], strength=0.0)
