"""The report's figures (matplotlib, written atomically) and DVC plot tables: test metric per arm, the
screen, the per-class recall-gain heatmap, Grad-CAM of the same test faces per arm."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from figures.charts import plt, save_figure
from runtime import atomic
from runtime.labels import EXPRESSIONS


def plot_by_arm(table: dict, metric: str, path: Path, best: str, control: str) -> None:
    """Every confirmed arm's test metric, mean and 95% CI over seeds, the val choices marked."""
    arms = list(table)
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.45 * len(arms)))
    for i, a in enumerate(arms):
        stat = table[a][metric]
        lo, hi = stat["ci95"] or [stat["mean"]] * 2
        colour = "crimson" if a == best else ("tab:orange" if a == control else "tab:blue")
        ax.errorbar([stat["mean"]], [i], xerr=[[stat["mean"] - lo], [hi - stat["mean"]]], fmt="o", capsize=4, color=colour)
    ax.axvline(table["real"][metric]["mean"], ls=":", color="gray", label="real only")
    ax.set_yticks(range(len(arms)), [f"{a} (chosen)" if a == best else (f"{a} (best control)" if a == control else a)
                                     for a in arms])
    ax.invert_yaxis()
    ax.set_xlabel(f"test {metric.replace('_', '-')}")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    ax.set_title(f"test {metric.replace('_', '-')} per arm (mean, 95% CI over seeds)")
    save_figure(fig, path)


def plot_screen(rows: list[dict], path: Path) -> None:
    """The screen: val accuracy (what chose) and test accuracy of every control and mix at one seed."""
    if not rows:
        return
    rows = sorted(rows, key=lambda r: (r["kind"], -r["val_accuracy"]))
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.4 * len(rows)))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["val_accuracy"] for r in rows], height=0.4, label="val (chooses)")
    ax.barh(y + 0.2, [r["test_accuracy"] for r in rows], height=0.4, label="test", alpha=0.6)
    ax.set_yticks(y, [f"{r['arm']} *" if r["chosen"] else r["arm"] for r in rows])
    ax.invert_yaxis()
    lo = min(min(r["val_accuracy"], r["test_accuracy"]) for r in rows)
    ax.set_xlim(max(0.0, lo - 0.05), None)
    ax.set_xlabel("accuracy (one seed)")
    ax.legend(fontsize=8)
    ax.set_title("screen: * = chosen on val for confirmation")
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
    rows = [{"arm": a, "accuracy": r["accuracy"]["mean"], "macro_f1": r["macro_f1"]["mean"]} for a, r in table.items()]
    gain = [{"arm": a, "expression": e, "recall_gain": r["vs_real"]["recall"][e]["difference"]}
            for a, r in table.items() if "vs_real" in r for e in EXPRESSIONS]
    for name, data in (("accuracy_by_arm.csv", rows), ("per_class_gain.csv", gain)):
        buf = io.StringIO()
        if data:
            w = csv.DictWriter(buf, fieldnames=list(data[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(data)
        atomic.write_text(plots_dir / name, buf.getvalue())
