"""`fersynth evaluate`: any saved classifier on any prepared split, including other datasets that
hold only some of the 7 expressions (cross-dataset evaluation on a class subset)."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from classifiers.metrics import evaluate_predictions
from classifiers.saved_model import load_classifier
from classifiers.training import predict_proba
from facedata.prepared import SPLITS, load_split
from figures.charts import write_confusion
from runtime import atomic
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS


def restrict_to_classes(probs: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions among `classes` only, and labels/predictions re-indexed 0..len(classes)-1."""
    keep = torch.isin(labels, torch.tensor(classes))
    sub = probs[keep][:, classes]
    remap = torch.full((len(EXPRESSIONS),), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    return remap[labels[keep]], sub.argmax(1)


def run_evaluate(model_path: Path, data_dir: Path, split: str, out_dir: Path, classes: list[str],
                 tta: str | None, n_boot: int = 1000) -> dict:
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    if not model_path.is_file():
        raise UserError(f"{model_path}: model not found; run `dvc repro` (or `fersynth train-classifier`) first or pass --model")
    try:
        model, cfg, meta = load_classifier(model_path)
    except (ValueError, KeyError) as e:
        raise UserError(f"{model_path}: not a fersynth classifier ({e})") from None
    data = load_split(data_dir / f"{split}.safetensors")
    unknown = [c for c in classes if c not in EXPRESSIONS]
    if unknown:
        raise UserError(f"--classes: unknown expression '{unknown[0]}'; choose from {', '.join(EXPRESSIONS)}")
    present = sorted(set(data.labels.tolist()))
    class_ids = [EXPRESSIONS.index(c) for c in classes] if classes else present
    names = [EXPRESSIONS[k] for k in class_ids]
    probs = predict_proba(model, data.images, cfg, tta=tta)
    y_true, y_pred = restrict_to_classes(probs, data.labels, class_ids)
    if len(y_true) == 0:
        raise UserError(f"{data_dir}/{split}: no images of the classes {', '.join(names)}")
    report = evaluate_predictions(y_true, y_pred, num_classes=len(class_ids), n_boot=n_boot, class_names=names)
    report.update({"model": str(model_path), "data": str(data_dir), "split": split, "classes": names,
                   "tta": tta or cfg.tta})
    atomic.write_json(out_dir / "metrics.json", report)
    write_confusion(out_dir, names, y_true, y_pred, f"{model_path.parent.name} on {split}: acc {report['accuracy']:.3f}")
    _print(report)
    return report


def _print(report: dict) -> None:
    console = Console(stderr=True)
    lo, hi = report["accuracy_ci95"]
    console.print(f"{report['split']}: accuracy {report['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f}), "
                  f"macro-F1 {report['macro_f1']:.4f} on {report['n']} images")
    table = Table()
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for name, row in report["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    console.print(table)
