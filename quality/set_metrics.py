"""Set-level quality of a synthetic set against real faces, in any feature space (rows = images).

* FID (Heusel et al. 2017): Frechet distance between Gaussians fitted to the two feature sets.
  Tr sqrt(S1 S2) is the sum of square roots of the eigenvalues of S1 S2 (real and >= 0 for PSD
  S1, S2), which avoids scipy's sqrtm and its complex round-off.
* KID (Binkowski et al. 2018): `quality.probe.kid` (unbiased MMD^2, cubic kernel, subsets);
  per class with subset sizes capped by the smaller set, so disgust's few images still give a value.
* Improved precision / recall (Kynkaanniemi et al. 2019, k = 3): the share of synthetic points
  inside the union of real k-NN balls, and of real points inside the synthetic balls.
* Density / coverage (Naeem et al. 2020, k = 5): how many real balls hold each synthetic point on
  average (/k), and the share of real balls holding at least one synthetic point. Coverage drops
  when a filter keeps only easy, prototypical faces even if precision rises.

Hand-written (a few matrix products each) so that every metric runs on the judge's features as
well as Inception's; `tests/test_quality.py` checks them against torchmetrics and prdc.
"""

from __future__ import annotations

import torch
from torch import Tensor

from quality.neighbours import kth_radius
from quality.probe import kid
from runtime.labels import EXPRESSIONS


def fid(real: Tensor, fake: Tensor) -> float:
    real, fake = real.double(), fake.double()
    mu1, mu2 = real.mean(0), fake.mean(0)
    a1, a2 = real - mu1, fake - mu2  # S = A^T A / (n - 1)
    n1, n2, d = len(real), len(fake), real.shape[1]
    traces = a1.square().sum() / (n1 - 1) + a2.square().sum() / (n2 - 1)
    if min(n1, n2) < d:
        # Fewer images than dimensions (70 Inception rows of 2048 in the demo): the nonzero
        # eigenvalues of S1 S2 are those of M M^T with M = A1 A2^T / sqrt((n1-1)(n2-1)), so
        # Tr sqrt(S1 S2) is M's nuclear norm: an n1 x n2 SVD instead of a d x d eigensolve (2 s).
        tr_sqrt = torch.linalg.svdvals(a1 @ a2.T).sum() / ((n1 - 1) * (n2 - 1)) ** 0.5
    else:
        s1, s2 = a1.T @ a1 / (n1 - 1), a2.T @ a2 / (n2 - 1)
        tr_sqrt = torch.linalg.eigvals(s1 @ s2).real.clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + traces - 2 * tr_sqrt)


def _inside_any_ball(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Per point: inside any ball (bool), and how many balls hold it (int)."""
    inside, count = [], []
    for start in range(0, len(points), chunk):
        hit = torch.cdist(points[start : start + chunk].float(), centres.float()) <= radii[None, :]
        inside.append(hit.any(1))
        count.append(hit.sum(1))
    return torch.cat(inside), torch.cat(count)


def _balls_hit(centres: Tensor, radii: Tensor, points: Tensor, chunk: int = 1024) -> Tensor:
    """Per ball (centre): does it hold at least one of the points."""
    hit = []
    for start in range(0, len(centres), chunk):
        d = torch.cdist(centres[start : start + chunk].float(), points.float())
        hit.append((d <= radii[start : start + chunk, None]).any(1))
    return torch.cat(hit)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> dict[str, float]:
    real_r, fake_r = kth_radius(real, k), kth_radius(fake, k)
    precision = _inside_any_ball(fake, real, real_r)[0].double().mean()
    recall = _inside_any_ball(real, fake, fake_r)[0].double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real: Tensor, fake: Tensor, k: int = 5) -> dict[str, float]:
    real_r = kth_radius(real, k)
    _, count = _inside_any_ball(fake, real, real_r)
    density = count.double().sum() / (k * len(fake))
    coverage = _balls_hit(real, real_r, fake).double().mean()
    return {"density": float(density), "coverage": float(coverage)}


def mean_pairwise_distance(features: Tensor, pairs: int = 2000, seed: int = 0) -> float:
    """Mean distance between random distinct pairs (intra-set diversity)."""
    n = len(features)
    if n < 2:
        return float("nan")
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, n, (pairs,), generator=g)
    b = (a + torch.randint(1, n, (pairs,), generator=g)) % n
    return float((features[a].float() - features[b].float()).norm(dim=1).mean())


def set_metrics(real: Tensor, real_labels: Tensor, fake: Tensor, fake_labels: Tensor,
                max_real: int = 10000, seed: int = 0, kid_subset: int = 500, max_fake: int | None = None) -> dict:
    """Every set-level metric overall, and KID / diversity per class. Real is subsampled to max_real
    and fake to max_fake (random, so class mixes are kept in expectation): the k-NN metrics stay cheap
    at FER2013 scale, and two fake sets compared at the same max_fake are measured at the same size
    (recall, coverage and FID all move with the number of samples, not only with their quality)."""
    g = torch.Generator().manual_seed(seed)
    if len(real) > max_real:
        pick = torch.randperm(len(real), generator=g)[:max_real]
        real, real_labels = real[pick], real_labels[pick]
    out: dict = {"n_real": len(real), "n_synthetic_measured": min(len(fake), max_fake or len(fake)),
                 "n_synthetic": len(fake)}
    if max_fake is not None and len(fake) > max_fake:
        pick = torch.randperm(len(fake), generator=torch.Generator().manual_seed(seed + 1))[:max_fake]
        fake, fake_labels = fake[pick], fake_labels[pick]
    if len(fake) < 6:
        out["note"] = "fewer than 6 synthetic images: set-level metrics skipped"
        return out
    out["fid"] = round(fid(real, fake), 4)
    out["kid"] = round(kid(real, fake, subset_size=kid_subset, seed=seed), 6)
    out.update({k: round(v, 4) for k, v in precision_recall(real, fake).items()})
    out.update({k: round(v, 4) for k, v in density_coverage(real, fake).items()})
    per_class = {}
    for c, name in enumerate(EXPRESSIONS):
        r, f = real[real_labels == c], fake[fake_labels == c]
        row: dict = {"n_synthetic": len(f)}
        if len(r) >= 2 and len(f) >= 2:
            row["kid"] = round(kid(r, f, subset_size=min(kid_subset, len(r), len(f)), seed=seed), 6)
            row["diversity_synthetic"] = round(mean_pairwise_distance(f, seed=seed), 4)
            row["diversity_real"] = round(mean_pairwise_distance(r, seed=seed), 4)
        per_class[name] = row
    out["per_class"] = per_class
    return out
