"""Stage `train_chosen` (confirm): the control or the mix that the screen chose on val, trained on one of
the confirmation seeds (which the screen never used), so the report compares it with real only, no
augmentation and CAS on the same seeds."""

from __future__ import annotations

from pathlib import Path

from ablation.arms import run_arm
from ablation.config import AblationConfig
from ablation.selection import choose, screen_results
from classifiers.config import TrainConfig


def run_train_chosen(role: str, seed: int, clf_cfg: TrainConfig, abl: AblationConfig, screen_dir: Path, data_dir: Path,
                     synthetic_dir: Path | None, judge_path: Path, out_dir: Path, metrics_path: Path) -> dict:
    choice = choose(role, screen_results(screen_dir, abl), abl)
    print(f"train-chosen: {role} {choice['arm']} (val accuracy {choice['val_accuracy']:.4f} at seed {abl.screen_seed})")
    return run_arm(choice["arm"], seed, clf_cfg, abl, data_dir, synthetic_dir, judge_path, out_dir, metrics_path,
                   extra={"role": f"chosen {role}", "chosen_by": choice})
