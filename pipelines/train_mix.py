"""Stage `train_mix` (screen): real train plus synthetic faces for one mix (ablation/names.py: labels,
pool ratio or batch share, loss weight), at the screen seed."""

from __future__ import annotations

from pathlib import Path

from ablation.arms import run_arm
from ablation.config import AblationConfig
from ablation.names import parse_mix
from classifiers.config import TrainConfig
from runtime.errors import UserError


def check_mix(name: str) -> None:
    try:
        parse_mix(name)
    except ValueError as e:
        raise UserError(f"--mix {e}") from None


def run_train_mix(name: str, seed: int, clf_cfg: TrainConfig, abl: AblationConfig, data_dir: Path,
                  synthetic_dir: Path | None, judge_path: Path, out_dir: Path, metrics_path: Path) -> dict:
    check_mix(name)
    return run_arm(name, seed, clf_cfg, abl, data_dir, synthetic_dir, judge_path, out_dir, metrics_path,
                   extra={"role": "screen"})
