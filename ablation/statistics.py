"""The ablation's statistics, from every arm's metrics and saved test predictions: per arm the mean and
95% t-interval over seeds of test accuracy and macro-F1, per-class recall, and paired comparisons
against the real-only arm and against the best control (the same seeds on the same test images: a
seed-averaged paired bootstrap over test images with its 95% CI and p-value, plus a paired t-test over
seeds). Every choice (the best control, the configuration the report calls the answer) is made on val
accuracy, never on test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from classifiers.fit import load_predictions
from classifiers.metrics import confusion_matrices, paired_bootstrap_over_seeds, scores_from_confusion
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS

ARM_ORDER = {"real": 0, "no_augment": 1, "distill": 2, "mixup": 3, "cutmix": 4, "synthetic_only": 1e9}


CONTROL_KINDS = ("real", "no_augment", "control")  # arms without a synthetic face


def arm_sort_key(arm: str) -> float:
    return ARM_ORDER.get(arm, 1e8)


def mean_ci(values: list[float]) -> dict:
    """Mean and 95% t-interval over seeds (a single seed has no interval)."""
    a = np.asarray(values, dtype=float)
    mean = float(a.mean())
    if len(a) < 2:
        return {"mean": round(mean, 5), "ci95": None, "n": len(a)}
    half = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    # the metrics are shares: an interval past [0, 1] (few seeds, t's heavy tails) is clipped there
    return {"mean": round(mean, 5), "ci95": [round(max(0.0, mean - half), 5), round(min(1.0, mean + half), 5)], "n": len(a)}


def load_runs(metrics_dir: Path, seeds: list[int] | None = None) -> dict[str, list[dict]]:
    """arm -> that arm's runs (metrics dict + predictions), sorted by seed; only `seeds` when given (runs
    of seeds since dropped from params stay on disk and are left out)."""
    files = sorted(Path(metrics_dir).glob("*.json"))
    if not files:
        raise UserError(f"{metrics_dir}: no ablation runs found; run `dvc repro` (stages train_real, train_chosen, train_cas)")
    runs: dict[str, list[dict]] = {}
    for f in files:
        m = json.loads(f.read_text())
        if seeds is not None and m["seed"] not in seeds:
            continue
        m["_predictions"] = load_predictions(m["predictions"])
        runs.setdefault(m["arm"], []).append(m)
    if "real" not in runs:
        raise UserError(f"{metrics_dir}: no run of the 'real' arm (r = 0), which every comparison needs")
    return {arm: sorted(rs, key=lambda m: m["seed"]) for arm, rs in sorted(runs.items(), key=lambda kv: arm_sort_key(kv[0]))}


def paired(reference_runs: list[dict], rs: list[dict], y_test: torch.Tensor, n_boot: int) -> dict | None:
    """Arm minus reference on the seeds both ran: bootstrap over test images (accuracy, macro-F1,
    per-class recall) and a paired t-test over seeds."""
    reference = {m["seed"]: m for m in reference_runs}
    common = [m for m in rs if m["seed"] in reference]
    if not common:
        return None
    a = torch.stack([reference[m["seed"]]["_predictions"]["test_probs"].argmax(1) for m in common])
    b = torch.stack([m["_predictions"]["test_probs"].argmax(1) for m in common])
    out: dict = {"seeds": [m["seed"] for m in common]}
    for metric in ("accuracy", "macro_f1"):
        out[metric] = paired_bootstrap_over_seeds(y_test, a, b, metric, n_boot=n_boot)
        if len(common) >= 2:
            xa = [reference[m["seed"]]["test"][metric] for m in common]
            xb = [m["test"][metric] for m in common]
            t = stats.ttest_rel(xb, xa)
            out[metric]["t_test_p"] = None if math.isnan(t.pvalue) else round(float(t.pvalue), 5)
    pc = paired_bootstrap_over_seeds(y_test, a, b, "recall", n_boot=n_boot, per_class=True)
    out["recall"] = {e: {"difference": round(pc["difference"][k], 5),
                         "ci95": [round(pc["ci95"][0][k], 5), round(pc["ci95"][1][k], 5)],
                         "p_value": round(pc["p_value"][k], 5)} for k, e in enumerate(EXPRESSIONS)}
    return out


def arm_statistics(runs: dict[str, list[dict]], n_boot: int) -> dict:
    """Every arm's row, with `vs_real`; the synthetic arms also get `vs_best_control` (the arm without
    synthetic faces, real included, with the highest mean val accuracy)."""
    y_test = runs["real"][0]["_predictions"]["test_labels"]
    out = {}
    for arm, rs in runs.items():
        preds = torch.stack([m["_predictions"]["test_probs"].argmax(1) for m in rs])
        cm = torch.stack([confusion_matrices(y_test, p, len(EXPRESSIONS)) for p in preds])
        recalls = torch.stack([scores_from_confusion(c)["recall"] for c in cm])
        row = {
            "arm": arm, "kind": rs[0]["kind"], "ratio": rs[0]["ratio"], "levers": rs[0].get("levers", {}),
            "seeds": [m["seed"] for m in rs],
            "n_train": rs[0]["n_train"], "n_synthetic": rs[0]["merge"]["n_synthetic"],
            "accuracy": mean_ci([m["test"]["accuracy"] for m in rs]),
            "macro_f1": mean_ci([m["test"]["macro_f1"] for m in rs]),
            "val_accuracy": mean_ci([m["val_accuracy_tta"] for m in rs]),
            "recall": {e: round(float(recalls[:, k].mean()), 5) for k, e in enumerate(EXPRESSIONS)},
            "train_minutes": round(sum(m["train_minutes"] for m in rs), 2),
            "steps": round(sum(m.get("steps", 0) for m in rs) / len(rs)),  # older runs did not record it: 0
            "confusion_sum": cm.sum(0).tolist(),
        }
        if arm != "real":
            row["vs_real"] = paired(runs["real"], rs, y_test, n_boot)
        out[arm] = row
    control = best_control_on_val(out)
    for arm, row in out.items():
        if row["kind"] not in CONTROL_KINDS:
            row["vs_best_control"] = {"control": control, **(paired(runs[control], runs[arm], y_test, n_boot) or {})}
    return out


def best_control_on_val(table: dict) -> str:
    """The arm without synthetic faces (real, no_augment or a control) with the highest mean val accuracy."""
    candidates = [a for a, r in table.items() if r["kind"] in CONTROL_KINDS]
    return max(candidates, key=lambda a: (table[a]["val_accuracy"]["mean"], -arm_sort_key(a)))


def best_arm_on_val(table: dict) -> str:
    """The answer's configuration: real only or a real + synthetic mix, whichever has the highest mean val
    accuracy (a tie goes to real only); test plays no part."""
    candidates = [a for a, r in table.items() if r["kind"] in ("real", "mix")]
    return max(candidates, key=lambda a: (table[a]["val_accuracy"]["mean"], a == "real"))


def screen_table(screen: dict[str, dict], choices: dict[str, dict]) -> list[dict]:
    """One row per screened arm (one seed): val accuracy (what chose) and test accuracy and macro-F1."""
    chosen = {c["arm"] for c in choices.values()}
    return [{"arm": a, "kind": m["kind"], "levers": m.get("levers", {}), "seed": m["seed"],
             "val_accuracy": m["val_accuracy_tta"], "test_accuracy": m["test"]["accuracy"],
             "test_macro_f1": m["test"]["macro_f1"], "chosen": a in chosen}
            for a, m in screen.items()]


def shortfall_note(runs: dict[str, list[dict]]) -> str:
    """Arms that asked for more synthetic faces than the filter kept (they then share one set)."""
    short = {arm: rs[0]["merge"].get("shortfall") for arm, rs in runs.items() if rs[0]["merge"].get("shortfall")}
    if not short:
        return ""
    parts = [f"{arm} (short by {sum(v.values())})" for arm, v in short.items()]
    return ("Not enough kept synthetic faces for " + ", ".join(parts) + ": these arms used every kept face of the "
            "short classes, so they differ less than their ratios say. Generate more (generate.per_class).")
