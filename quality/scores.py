"""Per-image scores of synthetic faces, each the input of one filter.

* label fidelity: the judge's calibrated probability of the conditioning label;
* realism (Kynkaanniemi et al. 2019, sec. 5): max over real points of r_k(real) / d(fake, real),
  using only the real k-NN balls with the smallest radii (the paper drops the half with the
  largest, which sit in sparse regions and would call anything realistic); >= 1 means the image
  lies inside the estimated real manifold;
* memorization: the distance to the nearest real training face, against a threshold calibrated
  from how close real *test* faces come to real train (a low quantile of those distances, exact
  duplicates excluded): a synthetic face closer than that is treated as a copy of a training person;
* pixel copies: the same question asked in pixels, so it does not hang on one feature space: the
  smallest RMS difference between standardised faces over small shifts, against the same kind of
  test -> train calibration (catches shifted, re-lit or lightly noised copies of a training face);
* near-duplicates among the synthetic faces (same threshold), and degenerate images (flat or
  saturated).
"""

from __future__ import annotations

import torch
from torch import Tensor

from quality.neighbours import knn, kth_radius


def label_fidelity(probabilities: Tensor, labels: Tensor) -> Tensor:
    return probabilities.gather(1, labels[:, None]).squeeze(1)


def realism(fake: Tensor, real: Tensor, k: int = 3, keep_radii: float = 0.5, chunk: int = 1024) -> Tensor:
    radii = kth_radius(real, k)
    keep = radii <= torch.quantile(radii, keep_radii)
    centres, radii = real[keep].float(), radii[keep]
    out = []
    for start in range(0, len(fake), chunk):
        d = torch.cdist(fake[start : start + chunk].float(), centres).clamp(min=1e-12)
        out.append((radii[None, :] / d).max(1).values)
    return torch.cat(out) if out else torch.zeros(0)


def memorization_threshold(test_to_train: Tensor, quantile: float) -> float:
    """A low quantile of real-test -> real-train nearest distances, exact copies (distance ~0) left out."""
    d = test_to_train[test_to_train > 1e-6]
    if len(d) == 0:
        raise ValueError("every test face has an exact copy in train: cannot calibrate the memorization threshold")
    return float(torch.quantile(d.double(), quantile))


def standardise(images_uint8: Tensor) -> Tensor:
    """Per image zero mean, unit std (float32): brightness and contrast changes do not hide a copy."""
    x = images_uint8.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp(min=1.0)
    return (x - mean) / std


def pixel_copy_distance(a_uint8: Tensor, b_uint8: Tensor, max_shift: int = 2) -> Tensor:
    """Per pair (a[i], b[i]): min over integer shifts |dx|, |dy| <= max_shift of the RMS difference
    between a's central crop and the shifted crop of b, both standardised. 0 for an exact copy,
    ~1.4 for unrelated faces. 25 whole-batch tensor ops for max_shift 2, no per-image Python."""
    a, b = standardise(a_uint8), standardise(b_uint8)
    m, h, w = max_shift, a.shape[-2], a.shape[-1]
    centre = a[..., m:h - m, m:w - m]
    best = torch.full((len(a),), float("inf"))
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            window = b[..., m + dy:h - m + dy, m + dx:w - m + dx]
            best = torch.minimum(best, (centre - window).square().mean(dim=(1, 2, 3)).sqrt())
    return best


def near_duplicates(features: Tensor, threshold: float, candidates: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(is_duplicate, distance to nearest other synthetic image). Greedy in index order: image j is a
    duplicate when an earlier image that is not itself a duplicate lies within the threshold.

    candidates: bool mask of images still in the running (others neither count nor are marked)."""
    n = len(features)
    mask = torch.ones(n, dtype=torch.bool) if candidates is None else candidates.clone()
    dup = torch.zeros(n, dtype=torch.bool)
    nearest = torch.full((n,), float("inf"))
    if n < 2:
        return dup, nearest
    d, idx = knn(features, features, k=min(10, n - 1), exclude_self=True)
    nearest = d[:, 0]
    for j in torch.nonzero(mask & (nearest < threshold)).flatten().tolist():  # only the few close ones loop
        close = idx[j][(d[j] < threshold)]
        if bool((mask[close] & ~dup[close] & (close < j)).any()):
            dup[j] = True
    return dup, nearest


def degenerate(images_uint8: Tensor, min_std: float, max_saturated: float) -> Tensor:
    x = images_uint8.reshape(len(images_uint8), -1)
    flat = x.float().std(dim=1) < min_std
    saturated = ((x == 0) | (x == 255)).float().mean(dim=1) > max_saturated
    return flat | saturated
