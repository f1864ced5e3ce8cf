"""Stage `train_real`: a real-data-only arm for one seed: `real` (the reference every comparison uses,
r = 0, with the classifier's augmentation) or `no_augment` (the same with augmentation off)."""

from __future__ import annotations

from pathlib import Path

from ablation.arms import run_arm
from ablation.config import AblationConfig
from classifiers.config import TrainConfig


def run_train_real(arm: str, seed: int, clf_cfg: TrainConfig, abl: AblationConfig, data_dir: Path, out_dir: Path,
                   metrics_path: Path) -> dict:
    return run_arm(arm, seed, clf_cfg, abl, data_dir, None, None, out_dir, metrics_path)
