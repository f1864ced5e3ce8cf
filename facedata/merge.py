"""Merge real train with synthetic faces at a synthetic:real ratio, by index (no image copies on disk).

`ratio` is synthetic count / real count. Modes:
  proportional    synthetic class mix follows the real train mix;
  balance         synthetic first tops each class up toward the largest real class (water-filling,
                  so the rarest classes fill first), anything left is spread proportionally;
  synthetic_only  synthetic only, sized and class-mixed like the real train set (CAS).

Which synthetic images are used comes from one seeded permutation per class, and every ratio takes
a prefix of it, so the ratio-1 set contains the ratio-0.5 set: curves over ratios are not noise
from resampling. Where a class has fewer synthetic images than asked for, all are used and the
shortfall is reported.
"""

from __future__ import annotations

from typing import Literal

import torch

from facedata.prepared import LabelledImages
from runtime.labels import EXPRESSIONS

MergeMode = Literal["proportional", "balance", "synthetic_only"]


def _proportional(total: int, weights: list[int]) -> list[int]:
    """Split `total` in proportion to weights, rounding by largest remainder so the sum is exact."""
    w = torch.tensor(weights, dtype=torch.float64)
    if total <= 0 or float(w.sum()) == 0:
        return [0] * len(weights)
    exact = w / w.sum() * total
    counts = exact.floor().long()
    remainder = total - int(counts.sum())
    order = torch.argsort(exact - counts, descending=True, stable=True)
    counts[order[:remainder]] += 1
    return counts.tolist()


def _water_fill(total: int, real: list[int]) -> list[int]:
    """Give `total` images to the classes furthest below the largest, levelling them up together."""
    top = max(real)
    deficits = [top - c for c in real]
    if total >= sum(deficits):
        return deficits
    # find the level L with sum(max(0, L - c)) <= total, then share what is left one by one
    lo, hi = min(real), top
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(max(0, mid - c) for c in real) <= total:
            lo = mid
        else:
            hi = mid - 1
    counts = [max(0, lo - c) for c in real]
    left = total - sum(counts)
    for k in sorted(range(len(real)), key=lambda k: (real[k], k)):
        if left == 0:
            break
        if real[k] + counts[k] < top:
            counts[k] += 1
            left -= 1
    return counts


def synthetic_counts(mode: MergeMode, ratio: float, real_counts: list[int]) -> list[int]:
    """Synthetic images wanted per class (FER2013 order). Monotone in ratio for every mode."""
    n_real = sum(real_counts)
    if mode == "synthetic_only":
        return list(real_counts)
    total = int(round(ratio * n_real))
    if mode == "proportional":
        return _proportional(total, real_counts)
    fill = _water_fill(total, real_counts)
    rest = total - sum(fill)
    return [f + p for f, p in zip(fill, _proportional(rest, real_counts))]


def class_permutations(labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """One seeded permutation of the synthetic indices of each class; ratios take prefixes of them."""
    g = torch.Generator().manual_seed(seed)
    perms = []
    for k in range(len(EXPRESSIONS)):
        idx = torch.nonzero(labels == k).flatten()
        perms.append(idx[torch.randperm(len(idx), generator=g)])
    return perms


def select_synthetic(labels: torch.Tensor, wanted: list[int], seed: int) -> tuple[torch.Tensor, list[int]]:
    """Indices into the synthetic set (nested across ratios), and the count actually available per class."""
    perms = class_permutations(labels, seed)
    taken = [p[: max(0, w)] for p, w in zip(perms, wanted)]
    index = torch.cat(taken) if taken else torch.empty(0, dtype=torch.int64)
    return index, [len(t) for t in taken]


def merge(real: LabelledImages, synthetic: LabelledImages | None, mode: MergeMode, ratio: float,
          seed: int = 0) -> tuple[LabelledImages, dict]:
    """The training set for one arm of the ablation, plus a record of what went into it."""
    real_counts = torch.bincount(real.labels, minlength=len(EXPRESSIONS)).tolist()
    needs_synthetic = mode == "synthetic_only" or ratio > 0
    if needs_synthetic and synthetic is None:
        raise ValueError("this arm needs synthetic images, but none were given")
    if not needs_synthetic:
        return real, {"mode": mode, "ratio": 0.0, "n_real": len(real), "n_synthetic": 0,
                      "synthetic_per_class": dict.fromkeys(EXPRESSIONS, 0), "shortfall": {}}
    wanted = synthetic_counts(mode, ratio, real_counts)
    index, got = select_synthetic(synthetic.labels, wanted, seed)
    chosen = synthetic.subset(index)
    shortfall = {EXPRESSIONS[k]: wanted[k] - got[k] for k in range(len(EXPRESSIONS)) if got[k] < wanted[k]}
    if mode == "synthetic_only":
        merged = chosen
    else:
        merged = LabelledImages(torch.cat([real.images, chosen.images]), torch.cat([real.labels, chosen.labels]))
    info = {
        "mode": mode,
        "ratio": float(ratio) if mode != "synthetic_only" else None,
        "n_real": 0 if mode == "synthetic_only" else len(real),
        "n_synthetic": len(chosen),
        "synthetic_per_class": dict(zip(EXPRESSIONS, got)),
        "shortfall": shortfall,
        "selection_seed": seed,
        "synthetic_index_sum": int(index.sum()),  # a cheap fingerprint of which images were used
    }
    return merged, info


def largest_ratio(real_counts: list[int], available: list[int]) -> float:
    """The largest ratio at which a proportional mix needs no more synthetic faces of any class than
    `available` holds: a batch-share arm's pool, as large as it can be while following the real class mix.
    A class with no synthetic face at all is left out (merge then reports its shortfall), so one empty
    class does not empty the pool."""
    ratios = [a / r for r, a in zip(real_counts, available) if r > 0 and a > 0]
    return min(ratios) if ratios else 0.0
