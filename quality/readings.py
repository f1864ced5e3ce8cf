"""Set-level readings of a synthetic set against real faces: judge-feature set metrics, GAN-test, LPIPS
diversity, and the Inception-v3 reference when its weights are installed."""

from __future__ import annotations

import torch

from facedata.prepared import LabelledImages
from quality.config import FilterConfig
from quality.inception import InceptionReference, load_inception
from quality.probe import gan_test
from quality.set_metrics import set_metrics
from runtime.labels import EXPRESSIONS


def quality_readings(real: LabelledImages, real_feats: torch.Tensor, fake: LabelledImages, fake_feats: torch.Tensor,
                     probs: torch.Tensor, cfg: FilterConfig, lpips_fn, max_fake: int | None = None) -> dict:
    """Set-level metrics of `fake` against `real` (judge features; at most max_fake synthetic faces),
    GAN-test, and LPIPS diversity if available. Inception-v3 FID/KID come from
    `InceptionReference.compare`, timed apart (it is slow)."""
    out = set_metrics(real_feats, real.labels, fake_feats, fake.labels, cfg.max_real_for_metrics, cfg.seed,
                      max_fake=max_fake)
    if len(fake):
        out["gan_test"] = gan_test(probs, fake.labels)
    if lpips_fn is not None:
        out["lpips_diversity"] = _lpips_diversity(lpips_fn, real, fake, cfg.seed)
    return out


def inception_reference(cfg: FilterConfig, train: LabelledImages) -> tuple[InceptionReference | None, str]:
    """The real side of the Inception metrics (None when switched off or the weights are absent)."""
    model, description = load_inception(cfg.inception)
    if model is None:
        return None, description
    return InceptionReference(model, train.images, train.labels, cfg.inception_samples, cfg.seed), description


def _lpips_diversity(lpips_fn, real: LabelledImages, fake: LabelledImages, seed: int, pairs: int = 200) -> dict:
    """Mean LPIPS between random same-class pairs, synthetic vs real, per class."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for c, name in enumerate(EXPRESSIONS):
        row = {}
        for which, data in (("synthetic", fake), ("real", real)):
            idx = torch.nonzero(data.labels == c).flatten()
            if len(idx) < 2:
                continue
            a = idx[torch.randint(0, len(idx), (pairs,), generator=g)]
            b = idx[torch.randint(0, len(idx), (pairs,), generator=g)]
            ok = a != b
            row[which] = round(float(lpips_fn(data.images[a[ok]], data.images[b[ok]]).mean()), 4)
        out[name] = row
    return out
