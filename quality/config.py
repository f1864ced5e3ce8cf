"""`filter:` of params.yaml: the per-image filters of the synthetic faces (each switchable) and the quality readings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runtime.config import Section


class FilterConfig(Section):
    """`filter:` — per-image filters of the synthetic faces (each switchable) and the quality readings."""

    label_fidelity: bool = True
    label_tau: float = Field(0.5, ge=0, le=1)  # keep if the judge's calibrated p(conditioning label) >= tau
    label_tau_max: float = Field(1.0, ge=0, le=1)  # ... and <= this: a confidence band (1 = no upper bound)
    selection: Literal["confidence", "coverage"] = "confidence"  # coverage: per class, keep coverage_keep of the
    coverage_keep: float = Field(0.5, gt=0, le=1)  # passing faces, picked for coverage of real faces (judge features)
    realism: bool = True
    realism_tau: float = Field(0.7, ge=0)  # keep if realism score >= tau (>= 1: inside the real manifold)
    realism_k: int = Field(3, ge=1)
    realism_keep_radii: float = Field(0.5, gt=0, le=1)  # share of real k-NN balls used (smallest radii)
    memorization: bool = True
    memorization_quantile: float = Field(0.01, gt=0, lt=1)  # of real test -> real train NN distances
    pixel_copies: bool = True  # memorization also in pixels: shift-tolerant RMS of standardised faces on the shortlist
    pixel_max_shift: int = Field(2, ge=0, le=8)  # pixels of shift a copy may have
    duplicates: bool = True  # synthetic near-duplicates of each other (same threshold)
    edit_min_change: float = Field(0.2, ge=0)  # an edit of a real face closer to its source than this (standardised pixel RMS; unrelated faces ~1.4) is 'unchanged'
    degenerate: bool = True
    min_std: float = Field(4.0, ge=0)  # pixel std below this: a flat image
    max_saturated: float = Field(0.5, gt=0, le=1)  # share of 0/255 pixels above this: saturated
    min_keep_fraction: float = Field(0.1, ge=0, le=1)  # per class; below it: warn and report
    refill: bool = True  # ... and re-admit the class's best rejected images by label fidelity (never copies)
    lpips: bool = True  # LPIPS for memorization and diversity when its backbone weights are on disk
    lpips_top_k: int = Field(5, ge=1)  # LPIPS only on this shortlist from the feature-space k-NN
    max_real_for_metrics: int = Field(10000, ge=100)
    judge_bf16: bool = True  # judge features in bf16 autocast + channels_last where the CPU/GPU has native bf16 (benchmarks/bench_judge_features.py)
    inception: bool = True  # FID/KID on Inception-v3 features too, when its weights file is installed
    inception_samples: int = Field(35, ge=14)  # per set, class-stratified: Inception at 299 px is slow on CPU
    contact_per_class: int = Field(12, ge=1)
    cas_steps: int = Field(0, ge=0)  # CAS before/after filtering (quality/cas.py): steps per classifier; 0 = off
    cas_rounds: int = Field(4, ge=1)  # ... in this many rounds, val selection after each
    seed: int = 0
