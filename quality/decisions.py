"""The filter's decisions, a pure function of per-image scores: which synthetic faces are kept, the first
filter each rejected face fails, and the per-class refill."""

from __future__ import annotations

import torch

from quality.config import FilterConfig
from runtime.labels import EXPRESSIONS

REASONS = ("degenerate", "memorization", "duplicate", "label_fidelity", "realism")


def decide(cfg: FilterConfig, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """Kept mask and first reason per image (`""` when kept), before any per-class refill."""
    n = len(s["label_prob"])
    failed = {
        "degenerate": s["degenerate"] if cfg.degenerate else torch.zeros(n, dtype=torch.bool),
        "memorization": s["memorized"] if cfg.memorization else torch.zeros(n, dtype=torch.bool),
        "duplicate": s["duplicate"] if cfg.duplicates else torch.zeros(n, dtype=torch.bool),
        "label_fidelity": (s["label_prob"] < cfg.label_tau) if cfg.label_fidelity else torch.zeros(n, dtype=torch.bool),
        "realism": (s["realism"] < cfg.realism_tau) if cfg.realism else torch.zeros(n, dtype=torch.bool),
    }
    reason = [""] * n
    for name in reversed(REASONS):  # the earliest filter in REASONS wins
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
    soft = torch.tensor([r in ("label_fidelity", "realism") for r in reason], dtype=torch.bool)
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
