"""Merging real and synthetic faces: counts per mode, nested selection across ratios, and errors."""

from __future__ import annotations

import pytest
import torch

from facedata.merge import merge, synthetic_counts
from facedata.prepared import LabelledImages

REAL = [40, 5, 30, 50, 30, 20, 35]


def labelled(counts: list[int], fill: int) -> LabelledImages:
    labels = torch.repeat_interleave(torch.arange(7), torch.tensor(counts))
    images = torch.full((len(labels), 1, 48, 48), fill, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(len(labels)) % 256  # tell images apart
    return LabelledImages(images, labels)


def test_proportional_follows_the_real_mix_and_sums_exactly():
    counts = synthetic_counts("proportional", 0.5, REAL)
    assert sum(counts) == round(0.5 * sum(REAL))
    assert all(abs(c - 0.5 * r) <= 1 for c, r in zip(counts, REAL))


def test_balance_fills_the_rarest_classes_first_then_goes_proportional():
    small = synthetic_counts("balance", 0.1, REAL)  # 21 images level disgust (5) and surprise (20) up to 23
    assert small == [0, 18, 0, 0, 0, 3, 0]
    full = synthetic_counts("balance", 1.0, REAL)  # deficits (195) first, the rest proportional
    deficits = [max(REAL) - r for r in REAL]
    assert all(f >= d for f, d in zip(full, deficits)) and sum(full) == sum(REAL)


@pytest.mark.parametrize("mode", ["proportional", "balance"])
def test_counts_are_monotone_in_ratio(mode):
    previous = [0] * 7
    for r in [0.05, 0.1, 0.3, 0.5, 1, 2, 4]:
        counts = synthetic_counts(mode, r, REAL)
        assert all(c >= p for c, p in zip(counts, previous)), (r, counts, previous)
        previous = counts


def test_selection_is_nested_across_ratios_and_seeded():
    real, synth = labelled(REAL, 10), labelled([100] * 7, 200)
    half, info_half = merge(real, synth, "proportional", 0.5, seed=3)
    one, info_one = merge(real, synth, "proportional", 1.0, seed=3)
    again, _ = merge(real, synth, "proportional", 1.0, seed=3)
    other, _ = merge(real, synth, "proportional", 1.0, seed=4)
    n = len(real)
    as_set = lambda d: {(int(l), int(i)) for l, i in zip(d.labels[n:], d.images[n:, 0, 0, 0])}
    assert as_set(half) <= as_set(one)
    assert torch.equal(one.images, again.images)
    assert not torch.equal(one.images, other.images)
    assert info_half["n_synthetic"] == round(0.5 * n) and info_one["n_real"] == n
    assert torch.equal(one.images[:n], real.images)  # real train comes first, unchanged


def test_shortfall_is_reported_and_synthetic_only_mirrors_real():
    real, synth = labelled(REAL, 10), labelled([3] * 7, 200)
    _, info = merge(real, synth, "proportional", 1.0)
    assert info["shortfall"]["happy"] == 50 - 3 and "disgust" in info["shortfall"]
    cas, info = merge(real, labelled([100] * 7, 200), "synthetic_only", 1.0)
    assert torch.bincount(cas.labels, minlength=7).tolist() == REAL and info["n_real"] == 0
    assert bool((cas.images[:, 0, 1, 1] == 200).all())


def test_ratio_zero_is_real_and_missing_synthetic_is_an_error():
    real = labelled(REAL, 10)
    same, info = merge(real, None, "proportional", 0.0)
    assert same is real and info["n_synthetic"] == 0
    with pytest.raises(ValueError, match="synthetic"):
        merge(real, None, "proportional", 0.5)


def test_no_augment_arm_switches_off_training_ops_but_keeps_preprocessing():
    from ablation.arms import no_augment
    from classifiers.config import TrainConfig

    off = no_augment(TrainConfig(augment={"equalize": True, "pad_mode": "zeros"})).augment
    assert not off.any_enabled and off.equalize and off.pad_mode == "zeros"


def test_batch_share_pool_follows_the_real_mix_and_survives_an_empty_class():
    from facedata.merge import largest_ratio

    assert largest_ratio([100, 10, 50], [300, 10, 400]) == 1.0  # the scarcest class sets the ratio
    assert largest_ratio([100, 10, 50], [300, 0, 400]) == 3.0  # an empty class is reported, not fatal
    assert largest_ratio([100, 10], [0, 0]) == 0.0
