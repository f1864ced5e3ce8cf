"""Stage `report`: the ablation's statistics and a page a person would rather look at than read.

Reads every arm's metrics (metrics/ablation/*.json) and its saved val/test probabilities, the
filter's quality.json, the generator's metrics and the data. Computes per arm the mean and 95%
t-interval over seeds of test accuracy and macro-F1, per-class recall gain vs the real-only arm,
and a paired comparison against it (the same seeds on the same test images: a seed-averaged
paired bootstrap over test images with its 95% CI and p-value, plus a paired t-test over seeds).
The best ratio is chosen on val accuracy, never on test.

Writes reports/index.html (self-contained: figures inlined as base64 PNG, opens offline),
reports/summary.md, reports/figures/*.png, metrics/ablation.json (DVC metrics) and
reports/plots/*.csv (DVC plots: accuracy vs ratio, per-class gain).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from classifiers.labels import EXPRESSIONS
from classifiers.metrics import confusion_matrices, paired_bootstrap_over_seeds, scores_from_confusion
from pipelines import atomic
from pipelines.cas import cas_accuracy
from pipelines.config import AblationConfig
from pipelines.errors import UserError
from pipelines.plots import plot_confusion, plt, save_figure
from pipelines.train_mix import load_predictions

ARM_ORDER = {"no_augment": -2, "real": -1, "synthetic_only": 1e9}


def arm_sort_key(arm: str) -> float:
    if arm in ARM_ORDER:
        return ARM_ORDER[arm]
    return float(arm[1:]) if arm.startswith("r") else 1e8


def mean_ci(values: list[float]) -> dict:
    """Mean and 95% t-interval over seeds (a single seed has no interval)."""
    a = np.asarray(values, dtype=float)
    mean = float(a.mean())
    if len(a) < 2:
        return {"mean": round(mean, 5), "ci95": None, "n": len(a)}
    half = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    # the metrics are shares: an interval past [0, 1] (few seeds, t's heavy tails) is clipped there
    return {"mean": round(mean, 5), "ci95": [round(max(0.0, mean - half), 5), round(min(1.0, mean + half), 5)], "n": len(a)}


def load_runs(metrics_dir: Path) -> dict[str, list[dict]]:
    """arm -> that arm's runs (metrics dict + predictions), sorted by seed."""
    files = sorted(Path(metrics_dir).glob("*.json"))
    if not files:
        raise UserError(f"{metrics_dir}: no ablation runs found; run `dvc repro` (stages train_real, train_mix)")
    runs: dict[str, list[dict]] = {}
    for f in files:
        m = json.loads(f.read_text())
        m["_predictions"] = load_predictions(m["predictions"])
        runs.setdefault(m["arm"], []).append(m)
    if "real" not in runs:
        raise UserError(f"{metrics_dir}: no run of the 'real' arm (r = 0), which every comparison needs")
    return {arm: sorted(rs, key=lambda m: m["seed"]) for arm, rs in sorted(runs.items(), key=lambda kv: arm_sort_key(kv[0]))}


def arm_statistics(runs: dict[str, list[dict]], n_boot: int) -> dict:
    reference = {m["seed"]: m for m in runs["real"]}
    y_test = runs["real"][0]["_predictions"]["test_labels"]
    out = {}
    for arm, rs in runs.items():
        preds = torch.stack([m["_predictions"]["test_probs"].argmax(1) for m in rs])
        cm = torch.stack([confusion_matrices(y_test, p, len(EXPRESSIONS)) for p in preds])
        recalls = torch.stack([scores_from_confusion(c)["recall"] for c in cm])
        row = {
            "arm": arm, "kind": rs[0]["kind"], "ratio": rs[0]["ratio"], "seeds": [m["seed"] for m in rs],
            "n_train": rs[0]["n_train"], "n_synthetic": rs[0]["merge"]["n_synthetic"],
            "accuracy": mean_ci([m["test"]["accuracy"] for m in rs]),
            "macro_f1": mean_ci([m["test"]["macro_f1"] for m in rs]),
            "val_accuracy": mean_ci([m["val_accuracy_tta"] for m in rs]),
            "recall": {e: round(float(recalls[:, k].mean()), 5) for k, e in enumerate(EXPRESSIONS)},
            "train_minutes": round(sum(m["train_minutes"] for m in rs), 2),
            "steps": round(sum(m.get("steps", 0) for m in rs) / len(rs)),  # older runs did not record it: 0
            "confusion_sum": cm.sum(0).tolist(),
        }
        common = [m for m in rs if m["seed"] in reference]
        if arm != "real" and common:
            a = torch.stack([reference[m["seed"]]["_predictions"]["test_probs"].argmax(1) for m in common])
            b = torch.stack([m["_predictions"]["test_probs"].argmax(1) for m in common])
            row["vs_real"] = {"seeds": [m["seed"] for m in common]}
            for metric in ("accuracy", "macro_f1"):
                row["vs_real"][metric] = paired_bootstrap_over_seeds(y_test, a, b, metric, n_boot=n_boot)
                if len(common) >= 2:
                    xa = [reference[m["seed"]]["test"][metric] for m in common]
                    xb = [m["test"][metric] for m in common]
                    t = stats.ttest_rel(xb, xa)
                    row["vs_real"][metric]["t_test_p"] = None if math.isnan(t.pvalue) else round(float(t.pvalue), 5)
            pc = paired_bootstrap_over_seeds(y_test, a, b, "recall", n_boot=n_boot, per_class=True)
            row["vs_real"]["recall"] = {e: {"difference": round(pc["difference"][k], 5),
                                            "ci95": [round(pc["ci95"][0][k], 5), round(pc["ci95"][1][k], 5)],
                                            "p_value": round(pc["p_value"][k], 5)} for k, e in enumerate(EXPRESSIONS)}
        out[arm] = row
    return out


def best_arm_on_val(table: dict) -> str:
    """The ratio (real-only included) with the highest mean val accuracy; test plays no part."""
    candidates = [a for a, r in table.items() if r["kind"] in ("real", "mix")]
    return max(candidates, key=lambda a: (table[a]["val_accuracy"]["mean"], -arm_sort_key(a)))


# ---------------------------------------------------------------- figures

def _png(fig_path: Path) -> str:
    return base64.b64encode(fig_path.read_bytes()).decode()


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


def sample_sheet(data_dir: Path, synthetic_dir: Path, filtered_dir: Path, path: Path, per_group: int = 6) -> bool:
    """Per expression: real faces | kept synthetic | rejected synthetic."""
    import torchvision

    from pipelines.generate import load_synthetic
    from pipelines.prepared_data import load_split

    try:
        real = load_split(Path(data_dir) / "train.safetensors")
        generated, _ = load_synthetic(synthetic_dir)
        manifest = list(csv.DictReader(open(Path(filtered_dir) / "manifest.csv")))
    except (UserError, OSError):
        return False
    kept = torch.tensor([r["kept"] == "True" for r in manifest], dtype=torch.bool)
    blank = torch.full((1, 48, 48), 255, dtype=torch.uint8)
    tiles = []
    for c in range(len(EXPRESSIONS)):
        for images, mask in ((real.images, real.labels == c), (generated.images, (generated.labels == c) & kept),
                             (generated.images, (generated.labels == c) & ~kept)):
            idx = torch.nonzero(mask).flatten()[:per_group].tolist()
            tiles += [images[i] for i in idx] + [blank] * (per_group - len(idx)) + [blank]
    grid = torchvision.utils.make_grid(torch.stack(tiles).float() / 255, nrow=3 * (per_group + 1), padding=2, pad_value=1.0)
    grid = torch.nn.functional.interpolate(grid[None, :1], scale_factor=2, mode="nearest")[0]
    with atomic.atomic_path(path) as tmp:
        torchvision.utils.save_image(grid, tmp, format="PNG")
    return True


def gradcam_figures(runs: dict[str, list[dict]], arms: list[str], data_dir: Path, fig_dir: Path) -> dict[str, Path]:
    """Grad-CAM on the same test faces (one per expression) for each arm's first-seed model, so the
    regions a real-trained and a synthetic-trained model rely on can be compared side by side."""
    from classifiers.saved_model import load_classifier
    from pipelines.explain import gradcam_grid, sample_per_class
    from pipelines.prepared_data import load_split

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


# ---------------------------------------------------------------- text

def _fmt(stat: dict, scale: float = 100) -> str:
    ci = stat.get("ci95")
    return f"{stat['mean'] * scale:.1f}" + (f" [{ci[0] * scale:.1f}, {ci[1] * scale:.1f}]" if ci else "")


def _diff(row: dict, metric: str) -> str:
    d = row.get("vs_real", {}).get(metric)
    if not d:
        return "—"
    return f"{d['difference'] * 100:+.2f} [{d['ci95'][0] * 100:+.2f}, {d['ci95'][1] * 100:+.2f}] p={d['p_value']:.3f}"


def results_table_md(table: dict, best: str) -> list[str]:
    lines = ["| arm | n train (synthetic) | seeds | steps | test accuracy % [95% CI] | macro-F1 % [95% CI] | "
             "Δ accuracy vs real (paired) | disgust recall | fear recall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm, r in table.items():
        name = f"**{arm}** (best on val)" if arm == best else arm
        lines.append(f"| {name} | {r['n_train']} ({r['n_synthetic']}) | {len(r['seeds'])} | {r['steps'] or '?'} | {_fmt(r['accuracy'])} | "
                     f"{_fmt(r['macro_f1'])} | {_diff(r, 'accuracy')} | {r['recall']['disgust'] * 100:.1f} | "
                     f"{r['recall']['fear'] * 100:.1f} |")
    return lines


def quality_table_md(quality: dict) -> list[str]:
    if not quality:
        return ["(no quality metrics: the filter stage has not run)"]
    before, after = quality.get("before", {}), quality.get("after", {})
    rows = ["| metric | before filtering | after filtering | meaning |", "|---|---|---|---|"]
    notes = {"fid": "Fréchet distance, judge features (lower is closer to real)",
             "kid": "kernel distance, judge features (lower is closer)",
             "precision": "share of synthetic faces inside the real manifold",
             "recall": "share of real faces inside the synthetic manifold",
             "density": "closeness of synthetic faces to real neighbourhoods (≈1 like real)",
             "coverage": "share of real neighbourhoods that hold a synthetic face"}
    for k, note in notes.items():
        rows.append(f"| {k} | {before.get(k, 'n/a')} | {after.get(k, 'n/a')} | {note} |")
    for k, note in (("fid", "Fréchet distance, Inception-v3 features (the standard FID)"),
                    ("kid", "kernel distance, Inception-v3 features")):
        b, a = before.get("inception", {}).get(k, "n/a"), after.get("inception", {}).get(k, "n/a")
        rows.append(f"| {k} (Inception) | {b} | {a} | {note} |")
    rows.append(f"| GAN-test | {before.get('gan_test', {}).get('overall', 'n/a')} | "
                f"{after.get('gan_test', {}).get('overall', 'n/a')} | judge agrees with the conditioning label |")
    if isinstance(quality.get("cas"), dict):
        cas = quality["cas"]
        d = cas.get("after_minus_before", {})
        gap = f"; after − before {d['difference']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]" if d else ""
        rows.append(f"| CAS accuracy | {cas_accuracy(quality, 'before')} | {cas_accuracy(quality, 'after')} | "
                    f"train on synthetic only, test on real ({sum(cas.get('n_per_class', {}).values())} faces each, "
                    f"{cas.get('steps')} steps{gap}) |")
    rows.append(f"| images | {quality.get('n_generated')} | {quality.get('n_kept')} | generated → kept |")
    if "inception_features" in quality:
        rows += ["", f"Inception rows: {quality['inception_features']}."]
    return rows


def shortfall_note(runs: dict[str, list[dict]]) -> str:
    """Arms that asked for more synthetic faces than the filter kept (they then share one set)."""
    short = {arm: rs[0]["merge"].get("shortfall") for arm, rs in runs.items() if rs[0]["merge"].get("shortfall")}
    if not short:
        return ""
    parts = [f"{arm} (short by {sum(v.values())})" for arm, v in short.items()]
    return ("Not enough kept synthetic faces for " + ", ".join(parts) + ": these arms used every kept face of the "
            "short classes, so they differ less than their ratios say. Generate more (generate.per_class).")


def verdict(table: dict, best: str) -> str:
    mixes = [r for r in table.values() if r["kind"] == "mix"]
    if not mixes:
        return "No real+synthetic arm has run yet."
    r = table[best]
    if best == "real":
        return ("Synthetic data did not help here: the ratio chosen on val is 0 (real only). "
                "See the quality table for what the synthetic faces lack.")
    d = r["vs_real"]["accuracy"]
    signif = "significant" if d["ci95"][0] > 0 else ("a loss" if d["ci95"][1] < 0 else "not significant")
    return (f"The ratio chosen on val is {r['ratio']:g}: test accuracy {d['difference'] * 100:+.2f} points vs real only "
            f"(95% CI {d['ci95'][0] * 100:+.2f} to {d['ci95'][1] * 100:+.2f}, p = {d['p_value']:.3f}; {signif}).")


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


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if Path(path).is_file() else {}


def run_report(abl: AblationConfig, metrics_dir: Path = Path("metrics/ablation"), quality_path: Path = Path("metrics/quality.json"),
               generator_metrics: Path = Path("metrics/generator.json"), judge_metrics: Path = Path("metrics/judge.json"),
               data_dir: Path = Path("data/prepared"), synthetic_dir: Path = Path("data/synthetic"),
               filtered_dir: Path = Path("data/filtered"), out_dir: Path = Path("reports"),
               summary_metrics: Path = Path("metrics/ablation.json")) -> dict:
    runs = load_runs(metrics_dir)
    table = arm_statistics(runs, abl.n_boot)
    best = best_arm_on_val(table)
    quality, generator, judge = _read_json(quality_path), _read_json(generator_metrics), _read_json(judge_metrics)
    prepared = _read_json(Path(data_dir) / "manifest.json")
    fig_dir = Path(out_dir) / "figures"
    figures = {}
    for metric in ("accuracy", "macro_f1"):
        plot_vs_ratio(table, metric, fig_dir / f"{metric}_vs_ratio.png", best)
        figures[f"{metric}_vs_ratio"] = fig_dir / f"{metric}_vs_ratio.png"
    plot_gain_heatmap(table, fig_dir / "per_class_gain.png")
    if (fig_dir / "per_class_gain.png").is_file():
        figures["per_class_gain"] = fig_dir / "per_class_gain.png"
    for arm in dict.fromkeys(["real", best]):
        plot_confusion(table[arm]["confusion_sum"], list(EXPRESSIONS), fig_dir / f"confusion_{arm}.png",
                       f"{arm}: test, summed over {len(table[arm]['seeds'])} seeds")
        figures[f"confusion_{arm}"] = fig_dir / f"confusion_{arm}.png"
    figures.update(gradcam_figures(runs, list(dict.fromkeys(["real", best])), data_dir, fig_dir))
    if sample_sheet(data_dir, synthetic_dir, filtered_dir, fig_dir / "samples.png"):
        figures["samples"] = fig_dir / "samples.png"
    for name in ("kept_rejected", "nearest_pairs"):
        p = Path("plots/quality") / f"{name}.png"
        if p.is_file():
            figures[name] = p

    summary = {
        "best_arm_on_val": best,
        "data": {"source": prepared.get("source"), "real_fraction": (prepared.get("params") or {}).get("real_fraction"),
                 "train": sum((prepared.get("counts") or {}).get("train", {}).values()), "files_sha256": prepared.get("files")},
        "arms": {a: {k: v for k, v in r.items() if k != "confusion_sum"} for a, r in table.items()},
        "quality": {k: quality.get(k) for k in ("n_generated", "n_kept", "memorization_distance", "copies_of_training_faces")}
        | {when: {**{k: quality.get(when, {}).get(k) for k in ("fid", "kid", "precision", "recall", "density", "coverage")},
                  **{f"{k}_inception": quality.get(when, {}).get("inception", {}).get(k) for k in ("fid", "kid")},
                  "cas_accuracy": cas_accuracy(quality, when, missing=None)}
           for when in ("before", "after")},
        "generator": {k: generator.get(k) for k in ("kind", "gan_test", "kid", "steps", "train_minutes", "steps_per_s")},
        "judge_test_accuracy": (judge.get("test") or {}).get("accuracy"),
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
    atomic.write_json(summary_metrics, {"best_arm_on_val": best, "verdict": verdict(table, best),
                                        **{a: {"accuracy": r["accuracy"]["mean"], "macro_f1": r["macro_f1"]["mean"],
                                               "accuracy_gain_vs_real": r.get("vs_real", {}).get("accuracy", {}).get("difference")}
                                           for a, r in table.items()}})
    print(verdict(table, best))
    print(f"report: {Path(out_dir) / 'index.html'}")
    return summary


def _source_name(source) -> str:
    if isinstance(source, dict):
        return " ".join(str(source[k]) for k in ("kind", "path") if source.get(k))
    return str(source)


def render_markdown(summary: dict, table: dict, best: str, quality: dict) -> str:
    d = summary["data"]
    lines = [
        "# fersynth report", "",
        f"Data: `{_source_name(d['source'])}`, real_fraction {d['real_fraction']}, {d['train']} real training faces. "
        f"Judge test accuracy {summary['judge_test_accuracy']}. Generator: {summary['generator'].get('kind')}, "
        f"{summary['generator'].get('steps')} steps, {summary['generator'].get('train_minutes')} min.", "",
        f"**{verdict(table, best)}**", "", *([f"Warning: {summary['shortfall']}", ""] if summary["shortfall"] else []),
        "## Classifiers (test, mean over seeds, 95% t-interval; Δ = seed-averaged paired bootstrap over test images)", "",
        *results_table_md(table, best), "",
        "## Synthetic data quality", "", *quality_table_md(quality), "",
        "## Per-class recall gain vs real only (points)", "",
        "| arm | " + " | ".join(EXPRESSIONS) + " |", "|---|" + "---|" * len(EXPRESSIONS),
        *(f"| {a} | " + " | ".join(f"{r['vs_real']['recall'][e]['difference'] * 100:+.1f}" for e in EXPRESSIONS) + " |"
          for a, r in table.items() if "vs_real" in r), "",
        f"Hardware: {summary['hardware']}. Classifier training {summary['wall_minutes']['classifiers']} min in all.", "",
    ]
    return "\n".join(lines)


def _md_table_to_html(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        return [html.escape(c.strip()).replace("**", "") for c in line.strip().strip("|").split("|")]

    if len(lines) < 2 or not lines[0].startswith("|"):
        return "<p>" + html.escape(" ".join(lines)) + "</p>"
    head = "".join(f"<th>{c}</th>" for c in cells(lines[0]))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells(line)) + "</tr>" for line in lines[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(summary: dict, table: dict, best: str, quality: dict, figures: dict[str, Path], runs: dict) -> str:
    def img(key: str, caption: str) -> str:
        if key not in figures:
            return ""
        return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{_png(figures[key])}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    d = summary["data"]
    config = runs["real"][0]["config"]
    css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
           "th{background:#f3f3f3}td:first-child{text-align:left}.verdict{font-size:1.2em;background:#eef6ff;padding:.8em;"
           "border-left:4px solid #3a7bd5}figure{display:inline-block;margin:.5em;vertical-align:top}img{max-width:100%}"
           "figcaption{font-size:13px;color:#555}.grid{display:flex;flex-wrap:wrap}pre{background:#f7f7f7;padding:1em;overflow:auto}")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>fersynth report</title><style>{css}</style></head><body>",
        "<h1>Does synthetic data make the expression classifier better?</h1>",
        f"<p class='verdict'>{html.escape(verdict(table, best))}</p>",
        f"<p><b>Warning:</b> {html.escape(summary['shortfall'])}</p>" if summary["shortfall"] else "",
        f"<p>Data <b>{html.escape(_source_name(d['source']))}</b>, real_fraction {d['real_fraction']}, {d['train']} real training faces; "
        f"judge test accuracy {summary['judge_test_accuracy']}; best ratio chosen on <b>val</b>, numbers on <b>test</b>.</p>",
        "<div class='grid'>", img("accuracy_vs_ratio", "Test accuracy vs synthetic:real ratio"),
        img("macro_f1_vs_ratio", "Test macro-F1 vs ratio"), "</div>",
        "<h2>Every arm</h2>", _md_table_to_html(results_table_md(table, best)),
        "<h2>Which expressions gain</h2>", img("per_class_gain", "Per-class recall gain vs real only"),
        "<div class='grid'>", *(img(f"confusion_{a}", f"Confusion matrix: {a}") for a in dict.fromkeys(["real", best])), "</div>",
        "<h2>What the models look at</h2>", "<div class='grid'>",
        *(img(f"gradcam_{a}", f"Grad-CAM, {a}: the same test faces, one per expression") for a in dict.fromkeys(["real", best])),
        "</div>",
        "<h2>The synthetic faces</h2>", img("samples", "Per expression (rows): real | kept synthetic | rejected synthetic"),
        _md_table_to_html(quality_table_md(quality)),
        "<div class='grid'>", img("kept_rejected", "Filter: kept (left) and rejected (right) per expression"),
        img("nearest_pairs", "Synthetic faces closest to a training face (top) and that face (bottom)"), "</div>",
        "<h2>Run</h2>",
        f"<pre>{html.escape(json.dumps({'classifier': config, 'data': d, 'generator': summary['generator'], 'hardware': summary['hardware'], 'wall_minutes': summary['wall_minutes']}, indent=1))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)
