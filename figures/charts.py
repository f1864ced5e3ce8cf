"""Figures shared by the stages and the report (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from runtime import atomic  # noqa: E402


def save_figure(fig, path: str | Path) -> None:
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_confusion(cm: list[list[int]] | np.ndarray, class_names: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix (recall on the diagonal) with counts in each cell."""
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(class_names), 0.8 + 0.75 * len(class_names)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    if title:
        ax.set_title(title)
    save_figure(fig, path)


def write_confusion(out_dir: Path, names: list[str], y_true: torch.Tensor, y_pred: torch.Tensor, title: str) -> None:
    """`confusion.csv` (actual,predicted rows for DVC's confusion template) and `confusion.png`."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["actual", "predicted"])
    writer.writerows((names[t], names[p]) for t, p in zip(y_true.tolist(), y_pred.tolist()))
    atomic.write_text(out_dir / "confusion.csv", buf.getvalue())
    cm = torch.bincount(y_true * len(names) + y_pred, minlength=len(names) ** 2).reshape(len(names), -1)
    plot_confusion(cm.tolist(), names, out_dir / "confusion.png", title=title)
