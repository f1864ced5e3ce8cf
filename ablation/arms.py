"""One arm of the ablation, for one seed: its training inputs, its classifier config, and the run.

What each arm name means is ablation/names.py. Every arm trains with the `classifier` params (the seed
replaced by the arm's seed) for the same number of steps, selects its checkpoint on real val and is
evaluated on real test. It writes the val and test probabilities (for the report's paired statistics)
and a metrics JSON that records the arm, its levers, the seed and what went into its training set.
The stages train_real, train_control, train_mix, train_chosen and train_cas (pipelines/) each run
their arms through `run_arm`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ablation.config import AblationConfig
from ablation.names import REAL_ARMS, Arm, parse_arm
from ablation.teacher import soft_targets, teacher_probabilities
from classifiers.augment import AugmentConfig
from classifiers.batches import BatchMix, SharedSet
from classifiers.config import TrainConfig
from classifiers.fit import fit_and_report
from classifiers.saved_model import save_classifier
from classifiers.training import predict_proba
from facedata.merge import largest_ratio, merge
from facedata.prepared import LabelledImages, load_prepared
from facedata.synthetic import load_synthetic
from runtime import atomic
from runtime.checkpoint import save_checkpoint
from runtime.device import is_main_process
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS

SYNTHETIC_DIRS = {"filtered": Path("data/filtered"), "raw": Path("data/synthetic")}


Teacher = Callable[[torch.Tensor], torch.Tensor]  # uint8 faces -> the teacher's probabilities


@dataclass
class ArmInputs:
    """What `train_classifier` gets for one arm, beyond the classifier config."""

    train: LabelledImages
    record: dict  # what went into the training set, for the metrics JSON
    levers: dict = field(default_factory=dict)  # train_classifier's targets / weights / shared / batch_mix


def no_augment(cfg: TrainConfig) -> TrainConfig:
    """Every training op off; preprocessing (equalize) and padding mode stay as configured."""
    off = AugmentConfig.off().model_copy(update={"equalize": cfg.augment.equalize, "pad_mode": cfg.augment.pad_mode})
    return cfg.model_copy(update={"augment": off})


def _synthetic_targets(arm: Arm, faces: LabelledImages, abl: AblationConfig, teacher: Teacher) -> torch.Tensor | None:
    return soft_targets(faces.labels, teacher(faces.images), abl.soft_weight) if arm.labels == "soft" else None


def _weights(arm: Arm, n: int) -> torch.Tensor | None:
    return torch.full((n,), arm.weight) if arm.weight != 1 else None


def _pool(arm: Arm, real: LabelledImages, synthetic: LabelledImages, abl: AblationConfig, teacher: Teacher) -> ArmInputs:
    """The ratio sizes a synthetic pool merged into the training set; batches draw from the union."""
    train, info = merge(real, synthetic, abl.mode, arm.amount, seed=abl.selection_seed)
    chosen = LabelledImages(train.images[len(real):], train.labels[len(real):])
    levers = {}
    soft = _synthetic_targets(arm, chosen, abl, teacher)
    if soft is not None:  # real faces keep their own one-hot labels
        levers["targets"] = torch.cat([F.one_hot(real.labels, len(EXPRESSIONS)).float(), soft])
    if arm.weight != 1:
        levers["weights"] = torch.cat([torch.ones(len(real)), _weights(arm, len(chosen))])
    return ArmInputs(train, info, levers)


def _batch_share(arm: Arm, real: LabelledImages, synthetic: LabelledImages, abl: AblationConfig, teacher: Teacher,
                 batch_size: int) -> ArmInputs:
    """Every step: the real batch of the real-only arm plus `per_batch` synthetic faces (share s of the
    batch), drawn from a pool that follows the real class mix and is as large as the kept set allows."""
    real_counts = torch.bincount(real.labels, minlength=len(EXPRESSIONS)).tolist()
    available = torch.bincount(synthetic.labels, minlength=len(EXPRESSIONS)).tolist()
    pool_ratio = largest_ratio(real_counts, available)
    merged, info = merge(real, synthetic, abl.mode, pool_ratio, seed=abl.selection_seed)
    if info["n_synthetic"] == 0:
        raise UserError(f"arm {arm.name}: no synthetic faces to share (the kept set holds none of the real set's classes)")
    pool = LabelledImages(merged.images[len(real):], merged.labels[len(real):])
    per_batch = max(1, round(batch_size * arm.amount / (1 - arm.amount)))
    shared = SharedSet(pool.images, pool.labels, per_batch, _synthetic_targets(arm, pool, abl, teacher),
                       _weights(arm, len(pool)))
    record = {**info, "mode": "batch_share", "share": arm.amount, "pool_ratio": round(pool_ratio, 4),
              "per_batch": per_batch, "batch": batch_size + per_batch, "n_real": len(real)}
    return ArmInputs(real, record, {"shared": shared})


def arm_inputs(arm: Arm, real: LabelledImages, synthetic: LabelledImages | None, abl: AblationConfig,
               cfg: TrainConfig, teacher: Teacher) -> ArmInputs:
    if arm.kind in REAL_ARMS:
        train, info = merge(real, None, abl.mode, 0.0)
        return ArmInputs(train, info)
    if arm.kind == "control":
        train, info = merge(real, None, abl.mode, 0.0)
        if arm.name == "distill":
            return ArmInputs(train, info, {"targets": soft_targets(real.labels, teacher(real.images), abl.distill_weight)})
        alpha = abl.mixup_alpha if arm.name == "mixup" else abl.cutmix_alpha
        return ArmInputs(train, info, {"batch_mix": BatchMix(arm.name, alpha)})
    if arm.kind == "synthetic_only":
        train, info = merge(real, synthetic, "synthetic_only", 1.0, seed=abl.selection_seed)
        return ArmInputs(train, info)
    if arm.mixing == "pool":
        return _pool(arm, real, synthetic, abl, teacher)
    return _batch_share(arm, real, synthetic, abl, teacher, cfg.batch_size)


def _levers(arm: Arm, abl: AblationConfig) -> dict:
    """The settings that shaped this arm, for its metrics JSON (and `dvc exp show`)."""
    out = {"labels": arm.labels if arm.kind == "mix" else "hard", "mixing": arm.mixing, "amount": arm.amount,
           "weight": arm.weight}
    if arm.kind == "mix" and arm.labels == "soft" or arm.name == "distill":
        out |= {"teacher_temperature": abl.teacher_temperature,
                "soft_weight": abl.soft_weight if arm.kind == "mix" else abl.distill_weight}
    if arm.name in ("mixup", "cutmix"):
        out["alpha"] = abl.mixup_alpha if arm.name == "mixup" else abl.cutmix_alpha
    return out


def run_arm(name: str, seed: int, clf_cfg: TrainConfig, abl: AblationConfig, data_dir: Path, synthetic_dir: Path | None,
            judge_path: Path | None, out_dir: Path, metrics_path: Path, extra: dict | None = None) -> dict:
    """Train one arm for one seed; write model, val/test probabilities and metrics atomically."""
    try:
        arm = parse_arm(name)
    except ValueError as e:
        raise UserError(f"arm {e}") from None
    data = load_prepared(data_dir)
    synthetic = None
    if arm.kind in ("mix", "synthetic_only"):
        synthetic_dir = Path(synthetic_dir or SYNTHETIC_DIRS[abl.synthetic])
        synthetic, _ = load_synthetic(synthetic_dir)
    judge_path = Path(judge_path or "models/judge/model.safetensors")

    def teacher(images: torch.Tensor) -> torch.Tensor:
        return teacher_probabilities(judge_path, images, abl.teacher_temperature)

    cfg = clf_cfg.model_copy(update={"seed": seed})
    inputs = arm_inputs(arm, data["train"], synthetic, abl, cfg, teacher)
    if len(inputs.train) == 0:
        raise UserError(f"arm {name}: the training set is empty (no synthetic images kept in {synthetic_dir}?)")
    if arm.kind == "no_augment":
        cfg = no_augment(cfg)
    out_dir = Path(out_dir)
    result, metrics, test_probs = fit_and_report(cfg, inputs.train, data["val"], data["test"], out_dir,
                                                 live_dir=out_dir / "dvclive", levers=inputs.levers)
    if not is_main_process():
        return metrics
    val_probs = predict_proba(result.model, data["val"].images, cfg)
    save_classifier(out_dir / "model.safetensors", result.model, cfg, best_epoch=result.best_epoch)
    predictions = out_dir / "predictions.safetensors"
    save_checkpoint(predictions, {"val_probs": val_probs.float(), "val_labels": data["val"].labels,
                                  "test_probs": test_probs.float(), "test_labels": data["test"].labels}, {})
    val_acc = float((val_probs.argmax(1) == data["val"].labels).double().mean())
    metrics = {"arm": arm.name, "kind": arm.kind, "ratio": arm.ratio, "seed": seed, **(extra or {}),
               "levers": _levers(arm, abl), "merge": inputs.record, "val_accuracy_tta": round(val_acc, 5),
               "predictions": str(predictions), **metrics}
    atomic.write_json(metrics_path, metrics)
    return metrics
