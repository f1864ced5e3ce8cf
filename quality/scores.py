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
import torch.nn.functional as F
from torch import Tensor

from quality.neighbours import kth_radius, partial_squared_distances


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


def exact_copies(query_uint8: Tensor, reference_uint8: Tensor, shortlist_index: Tensor) -> Tensor:
    """Per query image: are its pixels identical to one of its shortlisted reference images?"""
    if len(query_uint8) == 0:
        return torch.zeros(0, dtype=torch.bool)
    candidates = reference_uint8[shortlist_index]  # n x k x 1 x 48 x 48
    return (candidates == query_uint8[:, None]).flatten(2).all(2).any(1)


def standardise(images_uint8: Tensor) -> Tensor:
    """Per image zero mean, unit std (float32): brightness and contrast changes do not hide a copy."""
    x = images_uint8.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp(min=1.0)
    return (x - mean) / std


def pixel_copy_distance(a_uint8: Tensor, b_uint8: Tensor, max_shift: int = 2) -> Tensor:
    """Per pair (a[i], b[i]): min over integer shifts |dx|, |dy| <= max_shift of the RMS difference
    between a's central crop and the shifted crop of b, both standardised. 0 for an exact copy,
    ~1.4 for unrelated faces.

    |c - w|^2 = |c|^2 + |w|^2 - 2 c.w for every shift at once: c.w for all (2m+1)^2 shifts is one
    grouped convolution (each pair its own group), |w|^2 one box filter of b^2. That ranks the
    shifts; the RMS at the best shift is then recomputed directly, so float32 cancellation in the
    expansion cannot blur an exact copy (distance 0). No per-image Python, and no (2m+1)^2 passes
    over the batch (benchmarks/bench_filter_parts.py times it against `pixel_copy_distance_reference`)."""
    if len(a_uint8) == 0:
        return torch.zeros(0)
    a, b = standardise(a_uint8), standardise(b_uint8)
    n, m, h, w = len(a), max_shift, a.shape[-2], a.shape[-1]
    centre = a[:, :, m:h - m, m:w - m]  # n x 1 x (h-2m) x (w-2m)
    area = centre.shape[-2] * centre.shape[-1]
    cross = F.conv2d(b.reshape(1, n, h, w), centre, groups=n).reshape(n, -1)  # n x (2m+1)^2
    window_sq = F.avg_pool2d(b.square(), centre.shape[-2:], stride=1).reshape(n, -1) * area
    centre_sq = centre.square().sum(dim=(1, 2, 3))
    shift = (centre_sq[:, None] + window_sq - 2 * cross).argmin(1)  # index dy * (2m+1) + dx, offsets from 0
    best = torch.empty(n)
    side = 2 * m + 1
    for s in shift.unique().tolist():  # at most (2m+1)^2 groups, each a whole-batch op
        rows = torch.nonzero(shift == s).flatten()
        dy, dx = divmod(s, side)
        window = b[rows, :, dy:dy + h - 2 * m, dx:dx + w - 2 * m]
        best[rows] = (centre[rows] - window).square().mean(dim=(1, 2, 3)).sqrt()
    return best


def pixel_copy_distance_reference(a_uint8: Tensor, b_uint8: Tensor, max_shift: int = 2) -> Tensor:
    """The same distance the plain way, one pass per shift: the reference the fast version is
    tested and benchmarked against."""
    a, b = standardise(a_uint8), standardise(b_uint8)
    m, h, w = max_shift, a.shape[-2], a.shape[-1]
    centre = a[..., m:h - m, m:w - m]
    best = torch.full((len(a),), float("inf"))
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            window = b[..., m + dy:h - m + dy, m + dx:w - m + dx]
            best = torch.minimum(best, (centre - window).square().mean(dim=(1, 2, 3)).sqrt())
    return best


def near_duplicates(features: Tensor, threshold: float, candidates: Tensor | None = None,
                    chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """(is_duplicate, distance to nearest other synthetic image). Greedy in index order: image j is a
    duplicate when an earlier image that is not itself a duplicate lies within the threshold.

    One chunked pass of distances: the nearest distance is a row minimum, and the close pairs (few)
    are kept sparse, so every neighbour within the threshold counts, not only the k nearest.
    candidates: bool mask of images still in the running (others neither count nor are marked)."""
    n = len(features)
    nearest = torch.full((n,), float("inf"))
    if n < 2:
        return torch.zeros(n, dtype=torch.bool), nearest
    features = features.float()
    norms_sq = features.square().sum(1)
    pairs = []
    for start in range(0, n, chunk):
        d = partial_squared_distances(features[start:start + chunk], features, norms_sq)  # + |q|^2 = distance^2
        rows = torch.arange(d.shape[0])
        d[rows, rows + start] = float("inf")
        limit = threshold ** 2 - norms_sq[start:start + len(rows)]  # distance < threshold <=> d < limit
        row_min = d.min(1).values
        nearest[start:start + len(rows)] = (row_min - limit + threshold ** 2).clamp(min=0).sqrt()
        some = torch.nonzero(row_min < limit).flatten()  # usually few rows have any close pair
        j, i = torch.nonzero(d[some] < limit[some, None], as_tuple=True)
        pairs.append(torch.stack([some[j] + start, i], 1))
    close = torch.cat(pairs)
    close = close[close[:, 1] < close[:, 0]]  # (j, earlier i)
    earlier: dict[int, list[int]] = {}
    for j, i in close.tolist():  # only the few close pairs loop
        earlier.setdefault(j, []).append(i)
    live, is_dup = ([True] * n if candidates is None else candidates.tolist()), [False] * n
    for j in sorted(earlier):
        is_dup[j] = live[j] and any(live[i] and not is_dup[i] for i in earlier[j])
    return torch.tensor(is_dup, dtype=torch.bool), nearest


def degenerate(images_uint8: Tensor, min_std: float, max_saturated: float) -> Tensor:
    x = images_uint8.reshape(len(images_uint8), -1)
    flat = x.float().std(dim=1) < min_std
    saturated = ((x == 0) | (x == 255)).float().mean(dim=1) > max_saturated
    return flat | saturated


def nearest_real(shortlist: tuple[torch.Tensor, torch.Tensor], fake_uint8: torch.Tensor, real_uint8: torch.Tensor,
                 lpips_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of each fake image's nearest real image: the feature-space k-NN shortlist's
    first entry, or the shortlist re-ranked by LPIPS when LPIPS is available."""
    d, idx = shortlist
    if lpips_fn is None:
        return d[:, 0], idx[:, 0]
    n, k = idx.shape
    lp = lpips_fn(fake_uint8.repeat_interleave(k, 0), real_uint8[idx.flatten()]).reshape(n, k)
    best = lp.argmin(1)
    return lp.gather(1, best[:, None]).squeeze(1), idx.gather(1, best[:, None]).squeeze(1)


def nearest_pixel_copy(shortlist_index: torch.Tensor, fake_uint8: torch.Tensor, real_uint8: torch.Tensor,
                       max_shift: int, chunk: int = 2048) -> torch.Tensor:
    """Each fake image's smallest shift-tolerant pixel distance to its shortlisted real faces."""
    out = []
    for start in range(0, len(shortlist_index), chunk):
        rows = shortlist_index[start:start + chunk]
        n, k = rows.shape
        d = pixel_copy_distance(fake_uint8[start:start + chunk].repeat_interleave(k, 0),
                                       real_uint8[rows.flatten()], max_shift)
        out.append(d.view(n, k).min(1).values)
    return torch.cat(out) if out else torch.zeros(0)


def edit_change(edits_uint8: Tensor, real_uint8: Tensor, sources: Tensor, min_change: float) -> tuple[Tensor, Tensor]:
    """(distance to own source, unchanged) per image: the standardised pixel RMS between an edit and the
    real face it was made from (no shift: an edit keeps its source's pose), and whether that is below
    min_change. Faces sampled from noise (source -1) get distance nan and are never unchanged."""
    dist = torch.full((len(sources),), float("nan"))
    rows = torch.nonzero(sources >= 0).flatten()
    if len(rows):
        dist[rows] = pixel_copy_distance(edits_uint8[rows], real_uint8[sources[rows]], max_shift=0)
    return dist, torch.nan_to_num(dist, nan=float("inf")) < min_change
