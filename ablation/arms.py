"""One arm of the ablation, for one seed: its training set, its classifier config, and the run.

An arm is one of
  real            real train only, with the classifier's augmentation (the reference, r = 0);
  no_augment      real train only, augmentation off (how much classic augmentation alone gives);
  <ratio>         real train + synthetic at that synthetic:real ratio (`ablation.mode`);
  synthetic_only  synthetic only, sized and class-mixed like real train (CAS: train on synthetic,
                  test on real).
Every arm trains with the `classifier` params (the seed replaced by the arm's seed), selects its
checkpoint on real val and is evaluated on real test. It writes the val and test probabilities
(for the report's paired statistics) and a metrics JSON that records the arm, seed and merge.
The stages train_real, train_mix and train_cas (pipelines/) each run their arms through `run_arm`.
"""

from __future__ import annotations

from pathlib import Path

from ablation.config import AblationConfig
from classifiers.augment import AugmentConfig
from classifiers.config import TrainConfig
from classifiers.fit import fit_and_report
from classifiers.saved_model import save_classifier
from classifiers.training import predict_proba
from facedata.merge import merge
from facedata.prepared import LabelledImages, load_prepared
from facedata.synthetic import load_synthetic
from runtime import atomic
from runtime.checkpoint import save_checkpoint
from runtime.device import is_main_process
from runtime.errors import UserError

REAL_ARMS = ("real", "no_augment")


SYNTHETIC_ARMS = ("synthetic_only",)


SYNTHETIC_DIRS = {"filtered": Path("data/filtered"), "raw": Path("data/synthetic")}


def parse_arm(arm: str) -> tuple[str, float]:
    """('real' | 'no_augment' | 'mix' | 'synthetic_only', ratio) from the command-line spelling."""
    if arm in REAL_ARMS:
        return arm, 0.0
    if arm in SYNTHETIC_ARMS:
        return arm, 1.0
    try:
        ratio = float(arm)
    except ValueError:
        raise UserError(f"--arm '{arm}': expected real, no_augment, synthetic_only or a ratio such as 0.5") from None
    if ratio < 0:
        raise UserError(f"--arm '{arm}': a ratio must be >= 0")
    return ("real", 0.0) if ratio == 0 else ("mix", ratio)


def arm_label(kind: str, ratio: float) -> str:
    return f"r{ratio:g}" if kind == "mix" else kind


def no_augment(cfg: TrainConfig) -> TrainConfig:
    """Every training op off; preprocessing (equalize) and padding mode stay as configured."""
    off = AugmentConfig.off().model_copy(update={"equalize": cfg.augment.equalize, "pad_mode": cfg.augment.pad_mode})
    return cfg.model_copy(update={"augment": off})


def training_set(kind: str, ratio: float, real: LabelledImages, synthetic: LabelledImages | None,
                 abl: AblationConfig) -> tuple[LabelledImages, dict]:
    if kind in REAL_ARMS:
        return merge(real, None, abl.mode, 0.0)
    mode = "synthetic_only" if kind == "synthetic_only" else abl.mode
    return merge(real, synthetic, mode, ratio, seed=abl.selection_seed)


def run_arm(arm: str, seed: int, clf_cfg: TrainConfig, abl: AblationConfig, data_dir: Path,
                  synthetic_dir: Path | None, out_dir: Path, metrics_path: Path) -> dict:
    """Train one arm for one seed; write model, val/test probabilities and metrics atomically."""
    kind, ratio = parse_arm(arm)
    data = load_prepared(data_dir)
    synthetic = None
    if kind not in REAL_ARMS:
        synthetic_dir = Path(synthetic_dir or SYNTHETIC_DIRS[abl.synthetic])
        synthetic, _ = load_synthetic(synthetic_dir)
    train, merge_info = training_set(kind, ratio, data["train"], synthetic, abl)
    if len(train) == 0:
        raise UserError(f"arm {arm}: the training set is empty (no synthetic images kept in {synthetic_dir}?)")

    cfg = clf_cfg.model_copy(update={"seed": seed})
    if kind == "no_augment":
        cfg = no_augment(cfg)
    out_dir = Path(out_dir)
    result, metrics, test_probs = fit_and_report(cfg, train, data["val"], data["test"], out_dir,
                                                 live_dir=out_dir / "dvclive")
    if not is_main_process():
        return metrics
    val_probs = predict_proba(result.model, data["val"].images, cfg)
    save_classifier(out_dir / "model.safetensors", result.model, cfg, best_epoch=result.best_epoch)
    predictions = out_dir / "predictions.safetensors"
    save_checkpoint(predictions, {"val_probs": val_probs.float(), "val_labels": data["val"].labels,
                                  "test_probs": test_probs.float(), "test_labels": data["test"].labels}, {})
    val_acc = float((val_probs.argmax(1) == data["val"].labels).double().mean())
    metrics = {"arm": arm_label(kind, ratio), "kind": kind, "ratio": ratio if kind != "synthetic_only" else None,
               "seed": seed, "merge": merge_info, "val_accuracy_tta": round(val_acc, 5),
               "predictions": str(predictions), **metrics}
    atomic.write_json(metrics_path, metrics)
    return metrics
