"""Stage `train_mix`: real train plus synthetic faces at one synthetic:real ratio (`ablation.mode`), one seed."""

from __future__ import annotations

from pathlib import Path

from ablation.arms import run_arm
from ablation.config import AblationConfig
from classifiers.config import TrainConfig
from runtime.errors import UserError


def check_ratio(ratio: float) -> None:
    if not ratio > 0:
        raise UserError(f"--ratio {ratio:g}: a synthetic:real ratio must be > 0 (r = 0 is the real arm: fersynth train-real)")


def run_train_mix(ratio: float, seed: int, clf_cfg: TrainConfig, abl: AblationConfig, data_dir: Path,
                  synthetic_dir: Path | None, out_dir: Path, metrics_path: Path) -> dict:
    check_ratio(ratio)
    return run_arm(f"{ratio:g}", seed, clf_cfg, abl, data_dir, synthetic_dir, out_dir, metrics_path)
