"""Stage `train_judge`: a classifier trained on real train only, temperature-calibrated on val.

Its penultimate features and calibrated probabilities are the domain feature space and the
label-fidelity oracle for the quality metrics and filters. It never trains on val or test labels;
val is used for model selection and for the one calibration scalar, test only for ablation.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from classifiers.calibration import expected_calibration_error, fit_temperature, nll
from classifiers.config import TrainConfig
from classifiers.fit import fit_and_report
from classifiers.judge import Judge
from facedata.prepared import LabelledImages
from runtime import atomic
from runtime.device import is_main_process


def run_train_judge(cfg: TrainConfig, data: dict[str, LabelledImages], out_dir: Path, metrics_path: Path,
                    live_dir: Path | None = None) -> dict:
    console = Console(stderr=True)
    result, metrics, _ = fit_and_report(cfg, data["train"], data["val"], data["test"], out_dir, live_dir, console)
    if not is_main_process():
        return metrics
    judge = Judge(result.model, cfg)
    val_logits = judge.logits(data["val"].images)
    t = fit_temperature(val_logits, data["val"].labels)
    judge.temperature = t
    test_logits = judge.logits(data["test"].images)
    calib = {
        "temperature": round(t, 4),
        "val_nll_before": round(nll(val_logits, data["val"].labels), 5),
        "val_nll_after": round(nll(val_logits, data["val"].labels, t), 5),
        "test_nll_before": round(nll(test_logits, data["test"].labels), 5),
        "test_nll_after": round(nll(test_logits, data["test"].labels, t), 5),
        "test_ece_before": round(expected_calibration_error(test_logits.softmax(1), data["test"].labels), 5),
        "test_ece_after": round(expected_calibration_error((test_logits / t).softmax(1), data["test"].labels), 5),
    }
    metrics["calibration"] = calib
    judge.save(out_dir / "model.safetensors", best_epoch=result.best_epoch)
    atomic.write_json(metrics_path, metrics)
    console.print(f"judge temperature {t:.3f}: val NLL {calib['val_nll_before']:.4f} -> {calib['val_nll_after']:.4f}, "
                  f"test ECE {calib['test_ece_before']:.4f} -> {calib['test_ece_after']:.4f}")
    return metrics
