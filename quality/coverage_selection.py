"""Keeping synthetic faces for how well they cover the real faces, not only for how sure the judge is.

Confidence filtering keeps the prototypical faces of each class (the FER2013 study's coverage fell
from 0.98 to 0.78 through it). `cover_real` instead picks, per class, a budget of candidates greedily
in judge-feature space: again and again, the real face farthest from every face picked so far, then
the unpicked candidate nearest to it (a k-center greedy over the real faces, Gonzalez 1985, whose
centres must be candidates). Hand-written: scikit-learn has no k-center, and at a few thousand faces
per class it is one distance matrix and a loop of vector updates.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cover_real(real: Tensor, candidates: Tensor, budget: int) -> Tensor:
    """Indices of `budget` candidates (or all, if fewer) picked for coverage of `real`, in pick order."""
    n = len(candidates)
    if budget >= n:
        return torch.arange(n)
    if budget <= 0 or len(real) == 0:
        return torch.zeros(0, dtype=torch.int64)
    d = torch.cdist(real.float(), candidates.float())  # real x candidates
    nearest = torch.full((len(real),), float("inf"))  # each real face's distance to the picked set
    taken = torch.zeros(n, dtype=torch.bool)
    picks = []
    for _ in range(budget):
        far = int(torch.argmax(nearest))  # the least covered real face (inf before the first pick)
        row = d[far].masked_fill(taken, float("inf"))
        j = int(torch.argmin(row))
        picks.append(j)
        taken[j] = True
        nearest = torch.minimum(nearest, d[:, j])
    return torch.tensor(picks, dtype=torch.int64)
