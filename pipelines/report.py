"""Stage `report`: the ablation's statistics and a page a person would rather look at than read.

Reads every confirmed arm's metrics (metrics/ablation/*.json: real arms, CAS, the chosen control and mix
on every seed) and its saved val/test probabilities, the screen (metrics/screen/*.json), the
filter's quality.json, the generator's metrics and the data; the statistics are
ablation/statistics.py, the figures ablation/figures.py, the text ablation/render.py.

Writes reports/index.html (self-contained: figures inlined as base64 PNG, opens offline),
reports/summary.md, reports/figures/*.png, metrics/ablation.json (DVC metrics) and
reports/plots/*.csv (DVC plots: accuracy per arm, per-class gain).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from ablation.config import AblationConfig
from ablation.figures import gradcam_figures, plot_by_arm, plot_gain_heatmap, plot_screen, write_plot_csvs
from ablation.render import render_html, render_markdown, verdict
from ablation.selection import choose, screen_results
from ablation.statistics import arm_statistics, best_arm_on_val, best_control_on_val, load_runs, screen_table, shortfall_note
from facedata.prepared import load_split
from facedata.synthetic import load_synthetic
from figures.charts import plot_confusion
from figures.grids import sample_sheet
from quality.cas import cas_accuracy
from runtime import atomic
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS


def _sample_sheet(data_dir: Path, synthetic_dir: Path, filtered_dir: Path, path: Path) -> bool:
    """figures/grids.sample_sheet of the real train faces and the synthetic set as the filter judged it."""
    try:
        real = load_split(Path(data_dir) / "train.safetensors")
        generated, _ = load_synthetic(synthetic_dir)
        manifest = list(csv.DictReader(open(Path(filtered_dir) / "manifest.csv")))
    except (UserError, OSError):
        return False
    kept = torch.tensor([r["kept"] == "True" for r in manifest], dtype=torch.bool)
    sample_sheet(real.images, real.labels, generated.images, generated.labels, kept, path)
    return True


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if Path(path).is_file() else {}


def run_report(abl: AblationConfig, metrics_dir: Path = Path("metrics/ablation"), screen_dir: Path = Path("metrics/screen"),
               quality_path: Path = Path("metrics/quality.json"),
               generator_metrics: Path = Path("metrics/generator.json"), judge_metrics: Path = Path("metrics/judge.json"),
               data_dir: Path = Path("data/prepared"), synthetic_dir: Path = Path("data/synthetic"),
               filtered_dir: Path = Path("data/filtered"), out_dir: Path = Path("reports"),
               summary_metrics: Path = Path("metrics/ablation.json")) -> dict:
    runs = load_runs(metrics_dir, abl.seeds)
    table = arm_statistics(runs, abl.n_boot)
    best, control = best_arm_on_val(table), best_control_on_val(table)
    screen = screen_results(screen_dir, abl)
    choices = {role: choose(role, screen, abl) for role in ("control", "mix")}
    screened = screen_table(screen, choices)
    quality, generator, judge = _read_json(quality_path), _read_json(generator_metrics), _read_json(judge_metrics)
    prepared = _read_json(Path(data_dir) / "manifest.json")
    fig_dir = Path(out_dir) / "figures"
    figures = {}
    for metric in ("accuracy", "macro_f1"):
        plot_by_arm(table, metric, fig_dir / f"{metric}_by_arm.png", best, control)
        figures[f"{metric}_by_arm"] = fig_dir / f"{metric}_by_arm.png"
    plot_screen(screened, fig_dir / "screen.png")
    if (fig_dir / "screen.png").is_file():
        figures["screen"] = fig_dir / "screen.png"
    plot_gain_heatmap(table, fig_dir / "per_class_gain.png")
    if (fig_dir / "per_class_gain.png").is_file():
        figures["per_class_gain"] = fig_dir / "per_class_gain.png"
    for arm in dict.fromkeys(["real", best]):
        plot_confusion(table[arm]["confusion_sum"], list(EXPRESSIONS), fig_dir / f"confusion_{arm}.png",
                       f"{arm}: test, summed over {len(table[arm]['seeds'])} seeds")
        figures[f"confusion_{arm}"] = fig_dir / f"confusion_{arm}.png"
    figures.update(gradcam_figures(runs, list(dict.fromkeys(["real", best])), data_dir, fig_dir))
    if _sample_sheet(data_dir, synthetic_dir, filtered_dir, fig_dir / "samples.png"):
        figures["samples"] = fig_dir / "samples.png"
    for name in ("kept_rejected", "nearest_pairs"):
        p = Path("plots/quality") / f"{name}.png"
        if p.is_file():
            figures[name] = p

    summary = {
        "best_arm_on_val": best,
        "best_control_on_val": control,
        "screen_seed": abl.screen_seed,
        "screen_choices": choices,
        "screen": screened,
        "data": {"source": prepared.get("source"), "real_fraction": (prepared.get("params") or {}).get("real_fraction"),
                 "train": sum((prepared.get("counts") or {}).get("train", {}).values()), "files_sha256": prepared.get("files")},
        "arms": {a: {k: v for k, v in r.items() if k != "confusion_sum"} for a, r in table.items()},
        "quality": {k: quality.get(k) for k in ("n_generated", "n_kept", "memorization_distance", "copies_of_training_faces")}
        | {when: {**{k: quality.get(when, {}).get(k) for k in ("fid", "kid", "precision", "recall", "density", "coverage")},
                  **{f"{k}_inception": quality.get(when, {}).get("inception", {}).get(k) for k in ("fid", "kid")},
                  "cas_accuracy": cas_accuracy(quality, when, missing=None)}
           for when in ("before", "after")},
        "generator": {k: generator.get(k) for k in ("kind", "gan_test", "kid", "steps", "train_minutes", "steps_per_s")}
        | ({"folder": generator["folder"]} if "folder" in generator else {}),  # generate.source: folder
        "judge_test_accuracy": (judge.get("test") or {}).get("accuracy"),
        "real_test_accuracy": table["real"]["accuracy"]["mean"],
        "hardware": runs["real"][0].get("hardware"),
        "wall_minutes": {"classifiers": round(sum(r["train_minutes"] for r in table.values()), 2),
                         "generator": generator.get("train_minutes")},
    }
    write_plot_csvs(table, Path(out_dir) / "plots")
    summary["shortfall"] = shortfall_note(runs)
    md = render_markdown(summary, table, best, quality)
    page = render_html(summary, table, best, quality, figures, runs)
    atomic.write_text(Path(out_dir) / "summary.md", md)
    atomic.write_text(Path(out_dir) / "index.html", page)
    atomic.write_json(Path(out_dir) / "summary.json", summary)  # every number of the page, for scripts
    atomic.write_json(summary_metrics, {"best_arm_on_val": best, "best_control_on_val": control,
                                        "verdict": verdict(table, best),
                                        **{a: {"accuracy": r["accuracy"]["mean"], "macro_f1": r["macro_f1"]["mean"],
                                               "accuracy_gain_vs_real": r.get("vs_real", {}).get("accuracy", {}).get("difference"),
                                               "accuracy_gain_vs_best_control":
                                                   (r.get("vs_best_control", {}).get("accuracy") or {}).get("difference")}
                                           for a, r in table.items()}})
    print(verdict(table, best))
    print(f"report: {Path(out_dir) / 'index.html'}")
    return summary


