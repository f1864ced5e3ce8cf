"""The ablation's arms by name: what each name means, parsed without torch (params validation and the
command line use it before any work starts).

  real             real train only, with the classifier's augmentation: the reference, r = 0
  no_augment       real train only, augmentation off
  distill          control: real faces whose targets mix their label with the teacher's soft labels
                   (a gain from soft-labelled synthetic faces must beat this to be more than distillation)
  mixup, cutmix    controls: real faces with batched mixup / CutMix (softened targets, no new face)
  <labels>-<r|s><amount>[-w<weight>]
                   real + synthetic faces:
                     labels  hard (the conditioning label) | soft (the teacher's probabilities)
                     r       pool: synthetic count = amount x real count, drawn into batches at random
                     s       batch_share: every batch is the real-only arm's real batch plus synthetic
                             faces making up the share `amount` (0 < s < 1) of it
                     w       loss weight of a synthetic face (default 1: as much as a real one)
                   e.g. hard-r0.5, soft-r1, soft-s0.25, soft-s0.25-w0.5
  synthetic_only   CAS: synthetic faces only, sized and class-mixed like real train
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

REAL_ARMS = ("real", "no_augment")


CONTROLS = ("distill", "mixup", "cutmix")


_MIX = re.compile(r"^(hard|soft)-(r|s)(\d+(?:\.\d+)?)(?:-w(\d+(?:\.\d+)?))?$")


@dataclass(frozen=True)
class Arm:
    name: str
    kind: Literal["real", "no_augment", "control", "mix", "synthetic_only"]
    labels: Literal["hard", "soft"] = "hard"
    mixing: Literal["pool", "batch_share"] | None = None
    amount: float = 0.0  # pool: synthetic:real ratio; batch_share: synthetic share of every batch
    weight: float = 1.0  # loss weight of a synthetic face

    @property
    def ratio(self) -> float | None:
        return self.amount if self.mixing == "pool" else None


def parse_mix(name: str) -> Arm:
    """A real + synthetic arm from its name; ValueError with the grammar when it does not parse."""
    m = _MIX.match(name)
    if m is None:
        raise ValueError(f"'{name}' is not a mix name: expected <hard|soft>-<r|s><amount>[-w<weight>], "
                         "e.g. hard-r0.5 (pool, ratio 0.5) or soft-s0.25 (batch share 0.25)")
    labels, axis, amount, weight = m.group(1), m.group(2), float(m.group(3)), float(m.group(4) or 1)
    if axis == "r" and amount <= 0:
        raise ValueError(f"'{name}': a pool ratio must be > 0 (r = 0 is the real arm)")
    if axis == "s" and not 0 < amount < 1:
        raise ValueError(f"'{name}': a batch share must be between 0 and 1 (exclusive)")
    return Arm(name, "mix", labels, "pool" if axis == "r" else "batch_share", amount, weight)


def parse_arm(name: str) -> Arm:
    if name in REAL_ARMS:
        return Arm(name, name)
    if name in CONTROLS:
        return Arm(name, "control")
    if name == "synthetic_only":
        return Arm(name, "synthetic_only", amount=1.0)
    try:
        return parse_mix(name)
    except ValueError as e:
        raise ValueError(f"{e}; other arms: {', '.join((*REAL_ARMS, *CONTROLS, 'synthetic_only'))}") from None
