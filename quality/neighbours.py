"""Chunked k-nearest-neighbour search in feature space (matrix products, never all pairs in memory).

Hand-written because the sets are small (<= ~10^5 x a few hundred dims) and chunked squared
distances (one matrix product) plus `topk` are all that is needed; faiss / scikit-learn's
NearestNeighbors would add a dependency or copy to numpy without being faster at this size on 2 cores.
"""

from __future__ import annotations

import torch
from torch import Tensor


def partial_squared_distances(query: Tensor, reference: Tensor, reference_sq: Tensor) -> Tensor:
    """|r|^2 - 2 q.r for every pair: the squared distance |q - r|^2 less |q|^2, which is constant along
    a row, so row-wise minima, top-k and thresholds need nothing more. One matrix product, and two
    fewer passes over the (large) result than full distances; callers add |q|^2 to what they keep."""
    return torch.addmm(reference_sq[None, :], query, reference.T, alpha=-2)


def knn(query: Tensor, reference: Tensor, k: int, chunk: int = 2048, exclude_self: bool = False) -> tuple[Tensor, Tensor]:
    """(distances, indices), each len(query) x k, Euclidean, nearest first.

    exclude_self: query and reference are the same set; an item is not its own neighbour.
    """
    query, reference = query.float(), reference.float()
    reference_sq = reference.square().sum(1)
    k_eff = min(k + int(exclude_self), len(reference))
    dists, idxs = [], []
    for start in range(0, len(query), chunk):
        q = query[start : start + chunk]
        d = partial_squared_distances(q, reference, reference_sq)
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = float("inf")
        v, i = torch.topk(d, k_eff, dim=1, largest=False)
        v = (v + q.square().sum(1, keepdim=True)).clamp_(min=0).sqrt_()  # only the k kept become distances
        dists.append(v[:, : k_eff - int(exclude_self)] if exclude_self else v)
        idxs.append(i[:, : k_eff - int(exclude_self)] if exclude_self else i)
    if not dists:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.int64)
    return torch.cat(dists), torch.cat(idxs)


def kth_radius(features: Tensor, k: int) -> Tensor:
    """Distance from each point to its k-th nearest other point in the same set (k-NN ball radius)."""
    d, _ = knn(features, features, k, exclude_self=True)
    return d[:, -1]


def without_own_source(shortlist: tuple[Tensor, Tensor], sources: Tensor) -> tuple[Tensor, Tensor]:
    """A k+1 shortlist cut to k, each query's own source (index `sources[i]`, -1 for none) dropped."""
    d, idx = shortlist
    d = d.masked_fill(idx == sources[:, None], float("inf"))
    order = d.argsort(dim=1, stable=True)[:, : d.shape[1] - 1]
    return d.gather(1, order), idx.gather(1, order)
