"""Stage `train_classifier`: train one expression classifier on the prepared real train split,
select it on val, and report it on test (accuracy, macro-F1, per class, bootstrap 95% CIs)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from rich.console import Console

from classifiers.config import TrainConfig
from classifiers.metrics import evaluate_predictions
from classifiers.saved_model import save_classifier
from classifiers.training import predict_proba, train_classifier
from pipelines import atomic
from pipelines.prepared_data import load_prepared


def hardware() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_train_classifier(cfg: TrainConfig, data_dir: Path, out_dir: Path, metrics_path: Path,
                         live_dir: Path | None = None, console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    data = load_prepared(data_dir)
    live = None
    if live_dir is not None:
        from dvclive import Live

        live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, resume=False)

    def log(row: dict, step: int) -> None:
        if live is None:
            return
        for key in ("train_loss", "val_accuracy", "val_macro_f1", "val_nll", "lr"):
            live.log_metric(f"train/{key}", row[key], plot=True)
        live.step = step
        live.next_step()

    t0 = time.perf_counter()
    result = train_classifier(*data["train"], *data["val"], cfg, checkpoint_dir=out_dir / "checkpoints", log=log)
    wall = time.perf_counter() - t0
    probs = predict_proba(result.model, data["test"].images, cfg)
    test = evaluate_predictions(data["test"].labels, probs.argmax(1), seed=cfg.seed)
    save_classifier(out_dir / "model.safetensors", result.model, cfg, best_epoch=result.best_epoch)
    metrics = {
        "test": test,
        "val_at_best": result.best_val,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_minutes": round(result.train_seconds / 60, 2),
        "wall_minutes": round(wall / 60, 2),
        "stopped": result.stopped,
        "config": cfg.to_dict(),
        "hardware": hardware(),
    }
    atomic.write_json(metrics_path, metrics)
    if live is not None:
        live.end()
    console.print(f"test accuracy {test['accuracy']:.4f} (95% CI {test['accuracy_ci95'][0]:.4f}-{test['accuracy_ci95'][1]:.4f}), "
                  f"macro-F1 {test['macro_f1']:.4f}; best epoch {result.best_epoch}, {metrics['train_minutes']} min training")
    return metrics
