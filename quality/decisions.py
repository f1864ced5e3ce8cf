"""The filter's decisions, a pure function of per-image scores: which synthetic faces are kept, the first
filter each rejected face fails, the per-class refill, and the coverage selection."""

from __future__ import annotations

import math

import torch

from quality.config import FilterConfig
from runtime.labels import EXPRESSIONS

REASONS = ("degenerate", "memorization", "unchanged", "duplicate", "label_fidelity", "too_confident", "realism", "coverage")


SOFT_REASONS = ("label_fidelity", "too_confident", "realism")  # what a refill may re-admit


def decide(cfg: FilterConfig, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """Kept mask and first reason per image (`""` when kept), before any per-class refill."""
    n = len(s["label_prob"])
    none = torch.zeros(n, dtype=torch.bool)
    failed = {
        "degenerate": s["degenerate"] if cfg.degenerate else none,
        "memorization": s["memorized"] if cfg.memorization else none,
        "unchanged": s.get("unchanged", none),  # edits of real faces only; an unchanged edit is its source
        "duplicate": s["duplicate"] if cfg.duplicates else none,
        "label_fidelity": (s["label_prob"] < cfg.label_tau) if cfg.label_fidelity else none,
        "too_confident": (s["label_prob"] > cfg.label_tau_max) if cfg.label_fidelity else none,
        "realism": (s["realism"] < cfg.realism_tau) if cfg.realism else none,
    }
    reason = [""] * n
    for name in reversed(list(failed)):  # the earliest filter in REASONS wins
        for i in torch.nonzero(failed[name]).flatten().tolist():
            reason[i] = name
    kept = torch.tensor([r == "" for r in reason], dtype=torch.bool)
    return kept, reason


def refill(cfg: FilterConfig, labels: torch.Tensor, kept: torch.Tensor, reason: list[str],
           label_prob: torch.Tensor) -> tuple[torch.Tensor, list[str], dict[str, str]]:
    """Per class, when fewer than min_keep_fraction survive: a warning, and (with cfg.refill) the best
    label_fidelity / realism rejects re-admitted, never degenerate images, copies or duplicates.
    Returns new (kept, reason, {expression: warning}); the inputs are left as they were."""
    warnings = {}
    kept, reason = kept.clone(), list(reason)
    soft = torch.tensor([r in SOFT_REASONS for r in reason], dtype=torch.bool)
    for c, name in enumerate(EXPRESSIONS):
        members = labels == c
        n = int(members.sum())
        if n == 0:
            continue
        need = int(torch.ceil(torch.tensor(cfg.min_keep_fraction * n)).item()) - int((kept & members).sum())
        if need <= 0:
            continue
        msg = f"filter kept {int((kept & members).sum())}/{n} {name} images (< {cfg.min_keep_fraction:.0%})"
        readmit = []
        if cfg.refill:
            pool = torch.nonzero(members & ~kept & soft).flatten()
            readmit = pool[torch.argsort(label_prob[pool], descending=True, stable=True)[:need]].tolist()
            for i in readmit:
                kept[i] = True
                reason[i] = f"refilled ({reason[i]})"
            msg += f"; re-admitted {len(readmit)} by label fidelity"
        warnings[name] = msg
    return kept, reason, warnings


def select_for_coverage(cfg: FilterConfig, labels: torch.Tensor, kept: torch.Tensor, reason: list[str],
                        fake_features: torch.Tensor, real_features: torch.Tensor, real_labels: torch.Tensor
                        ) -> tuple[torch.Tensor, list[str]]:
    """With `selection: coverage`, per class keep ceil(coverage_keep x passing) of the passing faces, picked
    for coverage of that class's real faces (quality/coverage_selection.py); the rest get reason 'coverage'."""
    if cfg.selection != "coverage":
        return kept, reason
    from quality.coverage_selection import cover_real

    kept, reason = kept.clone(), list(reason)
    for c in range(len(EXPRESSIONS)):
        passing = torch.nonzero(kept & (labels == c)).flatten()
        budget = math.ceil(cfg.coverage_keep * len(passing))
        picked = passing[cover_real(real_features[real_labels == c], fake_features[passing], budget)]
        dropped = passing[~torch.isin(passing, picked)]
        kept[dropped] = False
        for i in dropped.tolist():
            reason[i] = "coverage"
    return kept, reason
