"""Stage `train_control` (screen): one real-only control at the screen seed: `distill` (the teacher's soft
labels mixed into real faces' targets), `mixup` or `cutmix` (batched), with the same steps as every arm."""

from __future__ import annotations

from pathlib import Path

from ablation.arms import run_arm
from ablation.config import AblationConfig
from classifiers.config import TrainConfig


def run_train_control(name: str, seed: int, clf_cfg: TrainConfig, abl: AblationConfig, data_dir: Path,
                      judge_path: Path, out_dir: Path, metrics_path: Path) -> dict:
    return run_arm(name, seed, clf_cfg, abl, data_dir, None, judge_path, out_dir, metrics_path, extra={"role": "screen"})
