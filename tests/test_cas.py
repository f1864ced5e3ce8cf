"""CAS before and after filtering (quality/cas.py): equal per-class counts, kept faces only after
filtering, and a filter that removes wrong labels shows up as a CAS gain."""

from __future__ import annotations

import pytest
import torch

from classifiers.config import TrainConfig
from facedata.prepared import LabelledImages
from quality.cas import cas_before_after, cas_counts, cas_sample

pytestmark = pytest.mark.usefixtures("one_thread")


def test_counts_follow_real_train_capped_by_what_was_kept():
    real = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    kept = torch.tensor([0] * 9 + [1] * 1 + [3] * 2)
    assert cas_counts(real, kept) == [5, 1, 0, 0, 0, 0, 0]


def test_samples_have_the_asked_counts_and_are_seeded():
    labels = torch.tensor([0, 1, 0, 2, 0, 1, 2, 2, 0])
    a, b = cas_sample(labels, [2, 1, 3, 0, 0, 0, 0], seed=3), cas_sample(labels, [2, 1, 3, 0, 0, 0, 0], seed=3)
    assert torch.equal(a, b) and len(set(a.tolist())) == 6
    assert torch.bincount(labels[a], minlength=7).tolist() == [2, 1, 3, 0, 0, 0, 0]


def squares(per_class: int, seed: int) -> LabelledImages:
    """Noise with a bright square in one of seven places: an expression stand-in a small CNN learns in
    a few dozen steps, so the test measures the labels and not the learning."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(7).repeat_interleave(per_class)[torch.randperm(7 * per_class, generator=g)]
    images = (100 + 25 * torch.randn(len(labels), 1, 48, 48, generator=g)).clamp(0, 255)
    for k in range(7):
        y, x = divmod(k, 3)
        images[labels == k, :, 16 * y:16 * y + 14, 16 * x:16 * x + 14] = 230
    return LabelledImages(images.to(torch.uint8), labels)


def test_a_filter_that_drops_wrong_labels_raises_cas():
    """Half the generated faces of each class carry the next class's label; the filter kept the
    correctly labelled half. CAS must see it: after > before on the same real test faces."""
    r = squares(30, seed=11)
    real = {"train": r.subset(torch.arange(0, 140)), "val": r.subset(torch.arange(140, 175)),
            "test": r.subset(torch.arange(175, 210))}
    clean = squares(40, seed=12)
    wrong = torch.arange(len(clean.labels)) % 2 == 1
    noisy = torch.where(wrong, (clean.labels + 1) % 7, clean.labels)
    fake = LabelledImages(clean.images, noisy)
    judge_cfg = TrainConfig(arch="vgg_fer", width=0.125, dropout=0.0, batch_size=32, lr=0.05, tta="none",
                            augment={"hflip": False, "crop_padding": 0, "rotation_deg": 0, "scale": 0, "brightness": 0,
                                     "contrast": 0, "erasing_p": 0})
    out = cas_before_after(judge_cfg, steps=60, rounds=2, seed=0, fake=fake, kept=~wrong, real=real)
    counts = cas_counts(real["train"].labels, noisy[~wrong])
    assert list(out["n_per_class"].values()) == counts and min(counts) > 0
    assert out["before"]["n_train"] == out["after"]["n_train"] == sum(counts)
    assert out["before"]["steps"] == out["after"]["steps"] == 60
    assert out["after"]["accuracy"] > out["before"]["accuracy"] + 0.2, (out["before"], out["after"])
    d = out["after_minus_before"]
    assert d["difference"] == pytest.approx(out["after"]["accuracy"] - out["before"]["accuracy"], abs=1e-4)
    assert d["ci95"][0] > 0
