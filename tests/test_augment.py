"""Tests for classifiers.augment: determinism, per-sample randomness, switches, equalize, TTA."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from classifiers.augment import (
    MEAN,
    STD,
    AugmentConfig,
    augment_batch,
    denormalize,
    preprocess,
    tta_probabilities,
    tta_views,
)
from runtime.errors import UserError

OFF = AugmentConfig.off()
SINGLE_OPS = {
    "hflip": dict(hflip=True),
    "crop": dict(crop_padding=4),
    "crop_zeros": dict(crop_padding=4, pad_mode="zeros"),
    "rotation": dict(rotation_deg=15.0),
    "scale": dict(scale=0.2),
    "brightness": dict(brightness=0.3),
    "contrast": dict(contrast=0.3),
    "erasing": dict(erasing_p=1.0),
}


def _images(n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 48, 48), generator=g, dtype=torch.uint8)


def _batch(n: int = 16) -> torch.Tensor:
    return preprocess(_images(n), equalize=False)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_preprocess_range_shape_dtype() -> None:
    imgs = _images(8)
    x = preprocess(imgs, equalize=False)
    assert x.shape == (8, 1, 48, 48) and x.dtype == torch.float32
    torch.testing.assert_close(x, (imgs.float() / 255 - MEAN) / STD)
    torch.testing.assert_close(denormalize(x), imgs.float() / 255)
    assert preprocess(imgs[:, 0], equalize=False).shape == (8, 1, 48, 48)  # (N, H, W) accepted
    with pytest.raises(TypeError):
        preprocess(imgs.float(), equalize=False)


def test_equalize_is_per_image() -> None:
    # image 0: dark low-contrast, image 1: bright; equalised separately, both must span ~[0, 255]
    g = _gen(1)
    dark = torch.randint(10, 40, (1, 1, 48, 48), generator=g, dtype=torch.uint8)
    bright = torch.randint(200, 230, (1, 1, 48, 48), generator=g, dtype=torch.uint8)
    batch = torch.cat([dark, bright])
    eq = denormalize(preprocess(batch, equalize=True))
    alone = denormalize(preprocess(dark, equalize=True))
    torch.testing.assert_close(eq[:1], alone)  # batch neighbours do not influence an image
    for img in eq:
        assert img.max() == 1.0 and img.min() < 0.1
        assert abs(img.mean().item() - 0.5) < 0.1


def test_same_seed_same_output_different_seed_different() -> None:
    x = _batch()
    cfg = AugmentConfig()
    a = augment_batch(x, cfg, _gen(123))
    b = augment_batch(x, cfg, _gen(123))
    c = augment_batch(x, cfg, _gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_per_sample_randomness() -> None:
    x = _batch(1).expand(8, -1, -1, -1).contiguous()  # 8 identical images
    for name, kwargs in SINGLE_OPS.items():
        if name == "erasing":
            continue  # identical fill value can coincide; checked below with its masks
        out = augment_batch(x, OFF.model_copy(update=kwargs), _gen(7))
        distinct = {tuple(o.flatten()[:200].tolist()) for o in out}
        assert len(distinct) > 1, f"{name}: every sample got the same parameters"
    out = augment_batch(x, OFF.model_copy(update=dict(erasing_p=1.0)), _gen(7))
    masks = [(o != x[0]) for o in out]
    assert any(not torch.equal(masks[0], m) for m in masks[1:])


def test_all_off_is_identity() -> None:
    x = _batch()
    out = augment_batch(x, OFF, _gen(0))
    assert torch.equal(out, x)
    assert out.data_ptr() != x.data_ptr()
    assert not OFF.any_enabled and AugmentConfig().any_enabled


@pytest.mark.parametrize("name", sorted(SINGLE_OPS))
def test_each_op_switches_on_alone(name: str) -> None:
    x = _batch()
    cfg = OFF.model_copy(update=SINGLE_OPS[name])
    out = augment_batch(x, cfg, _gen(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x), name
    assert torch.isfinite(out).all()


def test_hflip_and_crop_exact() -> None:
    x = _batch()
    out = augment_batch(x, OFF.model_copy(update=dict(hflip=True)), _gen(5))
    flipped = torch.flip(x, dims=(-1,))
    for o, xi, fi in zip(out, x, flipped):
        assert torch.equal(o, xi) or torch.equal(o, fi)
    # integer crop: every output row is a (shifted) row of the input, values preserved exactly
    out = augment_batch(x, OFF.model_copy(update=dict(crop_padding=3)), _gen(5))
    assert set(out.unique().tolist()) <= set(x.unique().tolist())
    # the affine path (flip folded into the resampling) with a tiny rotation: ~ a flip or identity
    out = augment_batch(x, OFF.model_copy(update=dict(hflip=True, rotation_deg=1e-6)), _gen(5))
    for o, xi, fi in zip(out, x, flipped):
        assert min((o - xi).abs().max(), (o - fi).abs().max()) < 1e-3


def test_affine_grid_matches_torch() -> None:
    from classifiers.augment import _affine_grid

    theta = torch.eye(2, 3).repeat(5, 1, 1) + 0.1 * torch.randn(5, 2, 3, generator=_gen(0))
    for h, w in ((48, 48), (40, 56)):
        expected = torch.nn.functional.affine_grid(theta, [5, 1, h, w], align_corners=False)
        torch.testing.assert_close(_affine_grid(theta, h, w), expected)


def test_brightness_contrast_stay_in_range() -> None:
    x = _batch()
    out = augment_batch(x, OFF.model_copy(update=dict(brightness=0.9, contrast=0.9)), _gen(2))
    pixels = out * STD + MEAN
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_erasing_area() -> None:
    x = _batch(64) + 10.0  # no pixel is 0 before erasing
    out = augment_batch(x, OFF.model_copy(update=dict(erasing_p=1.0)), _gen(9))
    frac = (out == 0).float().mean(dim=(1, 2, 3))
    assert (frac >= 0.01).all() and (frac <= 0.25).all()
    out = augment_batch(x, OFF.model_copy(update=dict(erasing_p=0.5)), _gen(9))
    erased = ((out == 0).flatten(1).any(dim=1)).float().mean()
    assert 0.2 < erased < 0.8


def test_bfloat16_and_odd_sizes() -> None:
    x = torch.randn(4, 3, 40, 56)
    out = augment_batch(x, AugmentConfig(), _gen(0))
    assert out.shape == x.shape
    xb = _batch(4).to(torch.bfloat16)
    assert augment_batch(xb, AugmentConfig(), _gen(0)).dtype == torch.bfloat16


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="crop_padding"):
        AugmentConfig(crop_padding=-1)
    with pytest.raises(ValidationError, match="pad_mode"):
        AugmentConfig(pad_mode="wrap")
    with pytest.raises(ValidationError, match="mixup"):
        AugmentConfig.model_validate({"hflip": True, "mixup": 0.2})
    assert AugmentConfig.model_validate({"rotation_deg": 5}).rotation_deg == 5


def test_a_params_file_typo_in_augment_names_the_nested_keys(tmp_path) -> None:
    from pipelines.config import load_section

    params = tmp_path / "params.yaml"
    params.write_text("classifier:\n  augment:\n    mixup: 0.2\n")
    with pytest.raises(UserError) as err:
        load_section("classifier", params)
    assert "unknown key 'classifier.augment.mixup'" in str(err.value)
    assert "allowed keys in 'classifier.augment': hflip, crop_padding" in str(err.value)


def test_tta_views() -> None:
    x = _batch(4)
    assert len(tta_views(x, "none")) == 1
    views = tta_views(x, "flip")
    assert len(views) == 2 and torch.equal(views[1], torch.flip(x, dims=(-1,)))
    views = tta_views(x, "flip_crops")
    assert len(views) == 10
    assert torch.equal(views[0], x) and torch.equal(views[1], torch.flip(x, dims=(-1,)))
    for i in range(2, 10, 2):
        assert views[i].shape == x.shape
        assert not torch.equal(views[i], x)
        assert torch.equal(views[i + 1], torch.flip(views[i], dims=(-1,)))
    # first crop is the image shifted by (2, 2): its interior equals the input's top-left interior
    assert torch.equal(views[2][..., 2:, 2:], x[..., :-2, :-2])
    with pytest.raises(UserError):
        tta_views(x, "rotate")


def test_tta_probabilities() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7))
    probs = tta_probabilities(model, _batch(3), "flip_crops")
    assert probs.shape == (3, 7)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_cpu_generator() -> None:
    x = _batch().cuda()
    a = augment_batch(x, AugmentConfig(), _gen(1))
    b = augment_batch(x.cpu(), AugmentConfig(), _gen(1))
    assert a.is_cuda
    torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-4)
