"""The ablation's statistics, from every arm's metrics and saved test predictions: per arm the mean and
95% t-interval over seeds of test accuracy and macro-F1, per-class recall, and a paired comparison
against the real-only arm (the same seeds on the same test images: a seed-averaged paired bootstrap
over test images with its 95% CI and p-value, plus a paired t-test over seeds). The best ratio is
chosen on val accuracy, never on test."""

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


def shortfall_note(runs: dict[str, list[dict]]) -> str:
    """Arms that asked for more synthetic faces than the filter kept (they then share one set)."""
    short = {arm: rs[0]["merge"].get("shortfall") for arm, rs in runs.items() if rs[0]["merge"].get("shortfall")}
    if not short:
        return ""
    parts = [f"{arm} (short by {sum(v.values())})" for arm, v in short.items()]
    return ("Not enough kept synthetic faces for " + ", ".join(parts) + ": these arms used every kept face of the "
            "short classes, so they differ less than their ratios say. Generate more (generate.per_class).")
