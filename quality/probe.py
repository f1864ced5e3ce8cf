"""Cheap quality readings taken during training: GAN-test and KID in the judge's feature space.

* GAN-test (Shmelkov et al. 2018): the fraction of generated images that a real-data classifier (the
  judge) assigns to their conditioning label, overall and per class. Bounded by the judge's own
  accuracy on real faces.
* KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  k(a, b) = (a.b / d + 1)^3, averaged over random subsets. Hand-written (a few lines) because
  torchmetrics / torch-fidelity are not dependencies and their KID runs on Inception features only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from runtime.labels import EXPRESSIONS


def gan_test(probabilities: Tensor, labels: Tensor) -> dict:
    """{"overall": float, "per_class": {expression: float}} for the judge's argmax vs the labels."""
    hit = (probabilities.argmax(1) == labels).float()
    per_class = {}
    for c, name in enumerate(EXPRESSIONS):
        mask = labels == c
        if mask.any():
            per_class[name] = round(float(hit[mask].mean()), 4)
    return {"overall": round(float(hit.mean()), 4), "per_class": per_class}


def _poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    return (a @ b.T / a.shape[1] + 1) ** 3


def kid(real: Tensor, fake: Tensor, subsets: int = 20, subset_size: int = 500, seed: int = 0) -> float:
    """Kernel Inception Distance between two feature sets (rows), unbiased, mean over subsets."""
    real, fake = real.double(), fake.double()
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=g)[:m]]
        y = fake[torch.randperm(len(fake), generator=g)[:m]]
        kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        off_diag = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        total += float(off_diag - 2 * kxy.mean())
    return total / subsets


QUALITY_SEED = 10**12  # seeds of the fixed quality batch: far from `generate`'s seed ranges


def _balanced_subset(labels: Tensor, per_class: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(len(EXPRESSIONS)):
        idx = (labels == c).nonzero().squeeze(1)
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picks)


class QualityProbe:
    """GAN-test and KID on a fixed class-balanced batch: the same labels and seeds at every reading,
    against judge features of a fixed class-balanced subset of the real training faces."""

    def __init__(self, judge, images_uint8: Tensor, labels: Tensor, n: int, seed: int = 0) -> None:
        self.judge = judge
        present = sorted(set(labels.tolist()))
        per_class = max(1, n // len(present))
        self.labels = torch.tensor(present).repeat_interleave(per_class)
        self.seeds = QUALITY_SEED + torch.arange(len(self.labels))
        self.real_features = judge.features(images_uint8[_balanced_subset(labels, per_class, seed)])

    def __call__(self, sample_fn: Callable[[Tensor, Tensor], Tensor]) -> dict:
        """sample_fn(labels, seeds) -> uint8 images; returns {"gan_test": {...}, "kid": float}."""
        images = sample_fn(self.labels, self.seeds)
        return {"gan_test": gan_test(self.judge.probabilities(images), self.labels),
                "kid": round(kid(self.real_features, self.judge.features(images)), 6)}
