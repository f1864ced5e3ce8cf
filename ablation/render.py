"""The report as text: the verdict sentence, markdown tables (summary.md) and one self-contained HTML
page (figures inlined as base64 PNG, opens offline)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ablation.statistics import CONTROL_KINDS
from quality.cas import cas_accuracy
from runtime.labels import EXPRESSIONS


def _png(fig_path: Path) -> str:
    return base64.b64encode(fig_path.read_bytes()).decode()


def _fmt(stat: dict, scale: float = 100) -> str:
    ci = stat.get("ci95")
    return f"{stat['mean'] * scale:.1f}" + (f" [{ci[0] * scale:.1f}, {ci[1] * scale:.1f}]" if ci else "")


def _diff(row: dict, metric: str, against: str = "vs_real") -> str:
    d = (row.get(against) or {}).get(metric)
    if not d:
        return "—"
    return f"{d['difference'] * 100:+.2f} [{d['ci95'][0] * 100:+.2f}, {d['ci95'][1] * 100:+.2f}] p={d['p_value']:.3f}"


def results_table_md(table: dict, best: str, control: str) -> list[str]:
    lines = ["| arm | n train (synthetic) | seeds | steps | val accuracy % | test accuracy % [95% CI] | macro-F1 % [95% CI] | "
             "Δ accuracy vs real (paired) | Δ macro-F1 vs real | Δ accuracy vs best control | disgust recall | fear recall |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, r in table.items():
        name = f"**{arm}** (chosen on val)" if arm == best else (f"{arm} (best control on val)" if arm == control else arm)
        lines.append(f"| {name} | {r['n_train']} ({r['n_synthetic']}) | {len(r['seeds'])} | {r['steps'] or '?'} | "
                     f"{r['val_accuracy']['mean'] * 100:.1f} | {_fmt(r['accuracy'])} | {_fmt(r['macro_f1'])} | "
                     f"{_diff(r, 'accuracy')} | {_diff(r, 'macro_f1')} | {_diff(r, 'accuracy', 'vs_best_control')} | "
                     f"{r['recall']['disgust'] * 100:.1f} | {r['recall']['fear'] * 100:.1f} |")
    return lines


def screen_table_md(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(no screen runs)"]
    lines = ["| screened arm (one seed) | kind | val accuracy % (chooses) | test accuracy % | test macro-F1 % |",
             "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["kind"], -r["val_accuracy"])):
        name = f"**{r['arm']}** (chosen)" if r["chosen"] else r["arm"]
        lines.append(f"| {name} | {r['kind']} | {r['val_accuracy'] * 100:.2f} | {r['test_accuracy'] * 100:.2f} | "
                     f"{r['test_macro_f1'] * 100:.2f} |")
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


def _versus(d: dict, what: str) -> str:
    signif = "a gain" if d["ci95"][0] > 0 else ("a loss" if d["ci95"][1] < 0 else "not significant")
    return (f"{d['difference'] * 100:+.2f} points vs {what} (95% CI {d['ci95'][0] * 100:+.2f} to "
            f"{d['ci95'][1] * 100:+.2f}; {signif})")


def verdict(table: dict, best: str) -> str:
    """The headline: the val-chosen configuration against real only AND against the best control."""
    mixes = [a for a, r in table.items() if r["kind"] == "mix"]
    if not mixes:
        return "No real+synthetic arm has run yet."
    mix = best if best != "real" else mixes[0]
    r = table[mix]
    control = r["vs_best_control"]["control"]
    against = [_versus(r["vs_real"]["accuracy"], "real only")]
    if control != "real":
        against.append(_versus(r["vs_best_control"]["accuracy"], f"the best control ({control}, chosen on val)"))
    if best == "real":
        return (f"Synthetic data did not help here: on val, real only beats the screen's best mix {mix}, whose test accuracy "
                f"is {'; '.join(against)}.")
    helps = r["vs_real"]["accuracy"]["ci95"][0] > 0 and (control == "real" or r["vs_best_control"]["accuracy"]["ci95"][0] > 0)
    conclusion = ("Synthetic faces beat real only and the best control chosen on val." if helps else
                  "So synthetic faces do not beat real only and the best control with a CI that excludes 0.")
    # the choice stands on val, but a control that does better on test is said out loud, not hidden
    above = [a for a, row in table.items() if row["kind"] in CONTROL_KINDS and a != control
             and row["accuracy"]["mean"] > r["accuracy"]["mean"]]
    caveat = "".join(f" Note: {a} scores higher on test ({table[a]['accuracy']['mean'] * 100:.1f}% against "
                     f"{r['accuracy']['mean'] * 100:.1f}%), though lower on val." for a in above)
    return f"The configuration chosen on val is {mix}: test accuracy {'; '.join(against)}. {conclusion}{caveat}"


def _teacher_line(summary: dict) -> str:
    teacher, real = summary.get("judge_test_accuracy"), summary.get("real_test_accuracy")
    if teacher is None:
        return "Teacher (the judge): no metrics."
    return (f"Teacher (the judge, source of every soft label): test accuracy {teacher * 100:.1f}% vs the real-only "
            f"arm's {real * 100:.1f}%.")


def _source_name(source) -> str:
    if isinstance(source, dict):
        return " ".join(str(source[k]) for k in ("kind", "path") if source.get(k))
    return str(source)


def _generator_line(generator: dict) -> str:
    if generator.get("kind") == "none":  # generate.source: folder
        return f"Synthetic faces: read from the folder `{generator.get('folder')}` (made outside fersynth; no generator trained)."
    return f"Generator: {generator.get('kind')}, {generator.get('steps')} steps, {generator.get('train_minutes')} min."


def render_markdown(summary: dict, table: dict, best: str, quality: dict) -> str:
    d = summary["data"]
    lines = [
        "# fersynth report", "",
        f"Data: `{_source_name(d['source'])}`, real_fraction {d['real_fraction']}, {d['train']} real training faces. "
        f"Judge test accuracy {summary['judge_test_accuracy']}. {_generator_line(summary['generator'])}", "",
        f"**{verdict(table, best)}**", "", *([f"Warning: {summary['shortfall']}", ""] if summary["shortfall"] else []),
        _teacher_line(summary), "",
        "## Classifiers (test, mean over seeds, 95% t-interval; Δ = seed-averaged paired bootstrap over test images)", "",
        *results_table_md(table, best, summary["best_control_on_val"]), "",
        f"## Screen (seed {summary['screen_seed']}, val chooses; the confirmed runs above use other seeds)", "",
        *screen_table_md(summary["screen"]), "",
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
        f"judge test accuracy {summary['judge_test_accuracy']}; every choice made on <b>val</b>, numbers on <b>test</b>.</p>",
        "<div class='grid'>", img("accuracy_by_arm", "Test accuracy per arm (mean and 95% CI over seeds)"),
        img("macro_f1_by_arm", "Test macro-F1 per arm"), "</div>",
        f"<p>{html.escape(_teacher_line(summary))}</p>",
        "<h2>Every arm</h2>", _md_table_to_html(results_table_md(table, best, summary["best_control_on_val"])),
        img("screen", "The screen: val accuracy of every control and mix (one seed); the val-best of each is confirmed"),
        _md_table_to_html(screen_table_md(summary["screen"])),
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
