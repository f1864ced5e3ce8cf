"""Seeded, stratified splitting and subsampling, and exact-duplicate detection."""

from __future__ import annotations

import math

import numpy as np
import torch


def _class_permutations(labels: torch.Tensor, seed: int) -> dict[int, np.ndarray]:
    """For each class, its indices in one fixed seeded order (the same order for every fraction)."""
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    return {int(c): rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)}


def stratified_split(labels: torch.Tensor, fractions: dict[str, float], seed: int) -> dict[str, torch.Tensor]:
    """Split indices per class by `fractions` (e.g. {"val": 0.1, "test": 0.1}); the rest is "train".

    Each class with at least 3 images keeps at least one image in every split.
    """
    parts: dict[str, list[np.ndarray]] = {name: [] for name in (*fractions, "train")}
    for idx in _class_permutations(labels, seed).values():
        start = 0
        for name, frac in fractions.items():
            k = max(1, round(frac * len(idx))) if len(idx) >= len(fractions) + 1 else 0
            parts[name].append(idx[start : start + k])
            start += k
        parts["train"].append(idx[start:])
    return {name: torch.from_numpy(np.sort(np.concatenate(p))).long() for name, p in parts.items()}


def nested_subsample(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A stratified, seeded subsample; nested: the subset for a smaller fraction lies inside a larger one's."""
    if fraction >= 1.0:
        return torch.arange(len(labels))
    keep = [idx[: max(1, math.ceil(fraction * len(idx)))] for idx in _class_permutations(labels, seed).values()]
    return torch.from_numpy(np.sort(np.concatenate(keep))).long()


def _row_ids(images: torch.Tensor) -> np.ndarray:
    """An id per image such that equal ids <=> byte-identical images (vectorised, via np.unique)."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1).numpy())
    rows = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    return np.unique(rows, return_inverse=True)[1].ravel()


def duplicate_report(splits: dict[str, torch.Tensor]) -> tuple[dict, dict[str, np.ndarray]]:
    """Exact duplicates within and across splits.

    Returns the report (counts) and, per split, a boolean mask of images whose pixels also occur
    in another split.
    """
    names = list(splits)
    sizes = [len(splits[n]) for n in names]
    ids = _row_ids(torch.cat([splits[n] for n in names])) if sum(sizes) else np.zeros(0, int)
    bounds = np.cumsum([0, *sizes])
    per_split = {n: ids[bounds[i] : bounds[i + 1]] for i, n in enumerate(names)}
    report: dict = {"within_split": {}, "across_splits": {}}
    for n, s_ids in per_split.items():
        _, counts = np.unique(s_ids, return_counts=True)
        report["within_split"][n] = {
            "distinct_arrays_repeated": int((counts > 1).sum()),
            "redundant_copies": int((counts - 1).sum()),
        }
    sets = {n: set(np.unique(s).tolist()) for n, s in per_split.items()}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            report["across_splits"][f"{a}-{b}"] = len(sets[a] & sets[b])
    owners = np.zeros(ids.max() + 1 if len(ids) else 0, dtype=np.int64)
    for n in names:
        owners[np.unique(per_split[n])] += 1
    report["distinct_arrays"] = int(len(np.unique(ids)))
    report["arrays_in_more_than_one_split"] = int((owners > 1).sum())
    shared = {n: owners[per_split[n]] > 1 for n in names}
    return report, shared
