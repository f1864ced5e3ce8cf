"""Stage `train_classifier`: train one expression classifier, select it on val, report it on test
(accuracy, macro-F1, per class, bootstrap 95% CIs)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from classifiers.config import TrainConfig
from classifiers.metrics import evaluate_predictions
from classifiers.saved_model import save_classifier
from classifiers.training import TrainResult, predict_proba, train_classifier
from facedata.prepared import LabelledImages
from runtime import atomic
from runtime.checkpoint import save_checkpoint
from runtime.device import hardware, is_main_process
from runtime.live import dvclive_logger


def fit_and_report(cfg: TrainConfig, train: LabelledImages, val: LabelledImages, test: LabelledImages,
                   out_dir: Path, live_dir: Path | None = None, console: Console | None = None,
                   levers: dict | None = None) -> tuple[TrainResult, dict, torch.Tensor]:
    """Train (resuming from out_dir/checkpoints), then evaluate the val-selected model on test.
    levers: train_classifier's targets / weights / shared / batch_mix (classifiers/batches.py)."""
    console = console or Console(stderr=True)
    live, log = dvclive_logger(live_dir)
    t0 = time.perf_counter()
    result = train_classifier(*train, *val, cfg, checkpoint_dir=out_dir / "checkpoints", log=log, **(levers or {}))
    wall = time.perf_counter() - t0
    test_probs = predict_proba(result.model, test.images, cfg)
    report = evaluate_predictions(test.labels, test_probs.argmax(1), seed=cfg.seed)
    metrics = {
        "test": report,
        "val_at_best": result.best_val,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "steps": result.steps,
        "train_minutes": round(result.train_seconds / 60, 2),
        "wall_minutes": round(wall / 60, 2),
        "stopped": result.stopped,
        "n_train": len(train),
        "config": cfg.to_dict(),
        "hardware": hardware(),
    }
    if live is not None:
        live.end()
    console.print(f"test accuracy {report['accuracy']:.4f} (95% CI {report['accuracy_ci95'][0]:.4f}-"
                  f"{report['accuracy_ci95'][1]:.4f}), macro-F1 {report['macro_f1']:.4f}; best epoch "
                  f"{result.best_epoch}/{len(result.history)}, {metrics['train_minutes']} min training")
    return result, metrics, test_probs


def run_train_classifier(cfg: TrainConfig, data: dict[str, LabelledImages], out_dir: Path, metrics_path: Path,
                         live_dir: Path | None = None, plots_dir: Path | None = None) -> dict:
    result, metrics, test_probs = fit_and_report(cfg, data["train"], data["val"], data["test"], out_dir, live_dir)
    if not is_main_process():
        return metrics
    save_classifier(out_dir / "model.safetensors", result.model, cfg, best_epoch=result.best_epoch)
    save_checkpoint(out_dir / "test_predictions.safetensors", {"test_probs": test_probs, "labels": data["test"].labels}, {})
    atomic.write_json(metrics_path, metrics)
    if plots_dir is not None:
        from figures.charts import write_confusion
        from runtime.labels import EXPRESSIONS

        write_confusion(plots_dir, list(EXPRESSIONS), data["test"].labels, test_probs.argmax(1),
                        f"{cfg.arch} on test: acc {metrics['test']['accuracy']:.3f}")
    return metrics


def load_predictions(path: str | Path) -> dict[str, torch.Tensor]:
    from runtime.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(path)
    return tensors
