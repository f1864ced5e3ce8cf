"""The report's figures (matplotlib, written atomically) and DVC plot tables: test metric vs ratio,
the per-class recall-gain heatmap, Grad-CAM of the same test faces per arm."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from figures.charts import plt, save_figure
from runtime import atomic
from runtime.labels import EXPRESSIONS


def plot_vs_ratio(table: dict, metric: str, path: Path, best: str) -> None:
    mixes = [(r["ratio"], r[metric]) for r in table.values() if r["kind"] in ("real", "mix")]
    mixes.sort()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = [m[0] for m in mixes]
    y = [m[1]["mean"] for m in mixes]
    err = [[m[1]["mean"] - (m[1]["ci95"] or [m[1]["mean"]] * 2)[0] for m in mixes],
           [(m[1]["ci95"] or [m[1]["mean"]] * 2)[1] - m[1]["mean"] for m in mixes]]
    ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label="real + synthetic")
    for arm, style in (("no_augment", ":"), ("synthetic_only", "--")):
        if arm in table:
            ax.axhline(table[arm][metric]["mean"], ls=style, color="gray", label=arm.replace("_", " "))
    if best in table:
        ax.scatter([table[best]["ratio"]], [table[best][metric]["mean"]], s=160, facecolors="none",
                   edgecolors="crimson", label=f"best on val ({best})", zorder=3)
    ax.set_xlabel("synthetic : real ratio")
    ax.set_ylabel(f"test {metric.replace('_', '-')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"test {metric.replace('_', '-')} vs ratio (mean, 95% CI over seeds)")
    save_figure(fig, path)


def plot_gain_heatmap(table: dict, path: Path) -> None:
    arms = [a for a, r in table.items() if "vs_real" in r]
    if not arms:
        return
    gain = np.array([[table[a]["vs_real"]["recall"][e]["difference"] * 100 for e in EXPRESSIONS] for a in arms])
    lim = max(1.0, float(np.abs(gain).max()))
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(EXPRESSIONS), 0.8 + 0.5 * len(arms)))
    im = ax.imshow(gain, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(EXPRESSIONS)), EXPRESSIONS, rotation=30, ha="right")
    ax.set_yticks(range(len(arms)), arms)
    for i, a in enumerate(arms):
        for k, e in enumerate(EXPRESSIONS):
            sig = table[a]["vs_real"]["recall"][e]["p_value"] < 0.05
            ax.text(k, i, f"{gain[i, k]:+.1f}{'*' if sig else ''}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="recall gain vs real only (points)")
    ax.set_title("per-class recall gain vs real only (* p < 0.05, paired bootstrap)")
    save_figure(fig, path)


def gradcam_figures(runs: dict[str, list[dict]], arms: list[str], data_dir: Path, fig_dir: Path) -> dict[str, Path]:
    """Grad-CAM on the same test faces (one per expression) for each arm's first-seed model, so the
    regions a real-trained and a synthetic-trained model rely on can be compared side by side."""
    from classifiers.saved_model import load_classifier
    from facedata.prepared import load_split
    from tools.explain import gradcam_grid, sample_per_class

    test_path = Path(data_dir) / "test.safetensors"
    if not test_path.is_file():
        return {}
    test = load_split(test_path)
    idx = sample_per_class(test.labels, 1, seed=0)
    out = {}
    for arm in arms:
        model_path = Path(runs[arm][0]["predictions"]).with_name("model.safetensors")
        if not model_path.is_file():
            continue
        model, cfg, _ = load_classifier(model_path)
        path = fig_dir / f"gradcam_{arm}.png"
        gradcam_grid(model, cfg, test.images[idx], test.labels[idx], path, ncols=len(idx),
                     title=f"{arm} (seed {runs[arm][0]['seed']}): Grad-CAM for the true expression")
        out[f"gradcam_{arm}"] = path
    return out


def write_plot_csvs(table: dict, plots_dir: Path) -> None:
    rows = [{"ratio": r["ratio"], "accuracy": r["accuracy"]["mean"], "macro_f1": r["macro_f1"]["mean"]}
            for r in sorted(table.values(), key=lambda r: r["ratio"] or 0) if r["kind"] in ("real", "mix")]
    gain = [{"arm": a, "expression": e, "recall_gain": r["vs_real"]["recall"][e]["difference"]}
            for a, r in table.items() if "vs_real" in r for e in EXPRESSIONS]
    for name, data in (("accuracy_vs_ratio.csv", rows), ("per_class_gain.csv", gain)):
        buf = io.StringIO()
        if data:
            w = csv.DictWriter(buf, fieldnames=list(data[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(data)
        atomic.write_text(plots_dir / name, buf.getvalue())
