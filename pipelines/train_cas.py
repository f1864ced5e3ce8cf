"""Stage `train_cas`: the synthetic-only arm (CAS: train on synthetic faces sized and class-mixed like real
train, select on real val, test on real test), one seed."""

from __future__ import annotations

from pathlib import Path

from ablation.arms import run_arm
from ablation.config import AblationConfig
from classifiers.config import TrainConfig


def run_train_cas(seed: int, clf_cfg: TrainConfig, abl: AblationConfig, data_dir: Path, synthetic_dir: Path | None,
                  out_dir: Path, metrics_path: Path) -> dict:
    return run_arm("synthetic_only", seed, clf_cfg, abl, data_dir, synthetic_dir, None, out_dir, metrics_path)
