"""What a training step sees beyond images and labels: per-face targets and loss weights, a second set
mixed into every batch at a fixed share, and batch-level mixing (mixup, CutMix).

The plain case (hard labels, equal weights, one set, no batch mixing) is the classic loop, untouched.
Each lever of the ablation switches one of these on:
  targets      a probability vector per face instead of its label (a teacher's soft labels, distillation);
  weights      a loss weight per face (synthetic faces counting w times a real one);
  SharedSet    every step takes the real batch the real-only arm would take, plus `per_batch` faces of a
               second set, so real faces are seen exactly as often as without it (He et al. ICLR 2023;
               Yu et al. 2023: synthetic data hurts once it outnumbers real in the batch);
  BatchMix     torchvision's batched MixUp / CutMix on the augmented batch (Zhang et al. 2018; Yun et al.
               2019): controls that soften targets without adding a single face.
The loss is cross-entropy against probability targets (label smoothing applied to them as to labels),
averaged with the per-face weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from runtime.checkpoint import data_digest

NUM_CLASSES = 7


@dataclass
class SharedSet:
    """A second training set that fills a fixed part of every batch (`per_batch` faces, a global count)."""

    images: Tensor  # uint8 M x 1 x 48 x 48
    labels: Tensor  # int64 M
    per_batch: int
    targets: Tensor | None = None  # float M x 7 probabilities; None: one-hot labels
    weights: Tensor | None = None  # float M loss weights; None: 1

    def __post_init__(self) -> None:
        if self.per_batch < 1 or len(self.labels) == 0:
            raise ValueError("a shared set needs faces and per_batch >= 1")
        check_targets(self.labels, self.targets, self.weights)


@dataclass(frozen=True)
class BatchMix:
    kind: Literal["mixup", "cutmix"]
    alpha: float = 1.0

    def transform(self):
        from torchvision.transforms import v2

        cls = v2.MixUp if self.kind == "mixup" else v2.CutMix
        return cls(alpha=self.alpha, num_classes=NUM_CLASSES)


def check_targets(labels: Tensor, targets: Tensor | None, weights: Tensor | None) -> None:
    n = len(labels)
    if targets is not None and (targets.shape != (n, NUM_CLASSES) or not torch.is_floating_point(targets)):
        raise ValueError(f"targets must be float {n} x {NUM_CLASSES} probabilities, got {targets.dtype} {tuple(targets.shape)}")
    if targets is not None and not torch.allclose(targets.sum(1), torch.ones(n), atol=1e-3):
        raise ValueError("every row of targets must sum to 1")
    if weights is not None and (weights.shape != (n,) or bool((weights < 0).any())):
        raise ValueError(f"weights must be {n} non-negative floats")


def levers_fingerprint(targets: Tensor | None, weights: Tensor | None, shared: SharedSet | None,
                       mix: BatchMix | None) -> dict:
    """What a resumed run must share with its checkpoint besides config and data."""
    out: dict = {}
    if targets is not None:
        out["targets_sha256"] = data_digest(targets.float().contiguous())
    if weights is not None:
        out["weights_sha256"] = data_digest(weights.float().contiguous())
    if shared is not None:
        out["shared"] = {"per_batch": shared.per_batch, "data_sha256": data_digest(shared.images, shared.labels),
                         **levers_fingerprint(shared.targets, shared.weights, None, None)}
    if mix is not None:
        out["batch_mix"] = {"kind": mix.kind, "alpha": mix.alpha}
    return out


def batch_targets(labels: Tensor, targets: Tensor | None) -> Tensor:
    return targets if targets is not None else F.one_hot(labels, NUM_CLASSES).float()


def loss(logits: Tensor, labels: Tensor, targets: Tensor | None, weights: Tensor | None,
         class_weights: Tensor | None, label_smoothing: float) -> Tensor:
    """Cross-entropy of a batch; with neither targets nor weights exactly the classic call."""
    if targets is None and weights is None:
        return F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=label_smoothing)
    per_face = F.cross_entropy(logits, batch_targets(labels, targets), weight=class_weights,
                               label_smoothing=label_smoothing, reduction="none")
    if weights is None:
        return per_face.mean()
    return (per_face * weights).sum() / weights.sum().clamp(min=1e-12)
