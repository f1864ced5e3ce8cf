"""Report statistics: CIs over seeds, paired comparisons, selection on val (never test), the page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ablation.config import AblationConfig
from ablation.statistics import best_arm_on_val, mean_ci
from classifiers.metrics import paired_bootstrap_over_seeds
from pipelines.report import run_report
from runtime.checkpoint import save_checkpoint

N = 300


def fake_run(root: Path, arm: str, kind: str, ratio, seed: int, test_acc: float, val_acc: float,
             folder: str = "metrics") -> None:
    """An arm's saved outputs with predictions right on a chosen share of the images."""
    g = torch.Generator().manual_seed(seed * 100 + sum(map(ord, arm)))
    labels = torch.arange(N) % 7

    def probs(acc: float) -> torch.Tensor:
        right = torch.rand(N, generator=g) < acc
        pred = torch.where(right, labels, (labels + 1) % 7)
        return torch.nn.functional.one_hot(pred, 7).float()

    pred_path = root / "runs" / folder / arm / f"s{seed}" / "predictions.safetensors"
    pred_path.parent.mkdir(parents=True)
    tp, vp = probs(test_acc), probs(val_acc)
    save_checkpoint(pred_path, {"val_probs": vp, "val_labels": labels, "test_probs": tp, "test_labels": labels}, {})
    acc = float((tp.argmax(1) == labels).float().mean())
    metrics = {"arm": arm, "kind": kind, "ratio": ratio, "seed": seed, "n_train": 1000,
               "merge": {"n_synthetic": 0 if kind == "real" else 500}, "predictions": str(pred_path),
               "val_accuracy_tta": float((vp.argmax(1) == labels).float().mean()),
               "test": {"accuracy": acc, "macro_f1": acc - 0.05}, "train_minutes": 0.1, "config": {"arch": "x"},
               "hardware": {"cpu_threads": 2}}
    (root / folder).mkdir(exist_ok=True)
    name = f"{arm}.json" if folder == "screen" else f"{arm}_s{seed}.json"
    (root / folder / name).write_text(json.dumps(metrics))


def fake_study(root: Path) -> AblationConfig:
    """Confirmed arms on seeds 0 and 1, a screen at seed 100. mixup is best on test but not on val;
    no_augment is the best control on val; the val-chosen mix beats real but not no_augment."""
    for seed in (0, 1):
        fake_run(root, "real", "real", None, seed, test_acc=0.60, val_acc=0.60)
        fake_run(root, "no_augment", "no_augment", None, seed, test_acc=0.72, val_acc=0.68)
        fake_run(root, "mixup", "control", None, seed, test_acc=0.80, val_acc=0.62)
        fake_run(root, "soft-s0.25", "mix", None, seed, test_acc=0.70, val_acc=0.70)
        fake_run(root, "synthetic_only", "synthetic_only", None, seed, test_acc=0.3, val_acc=0.3)
    for name, kind, val, test in (("distill", "control", 0.55, 0.9), ("mixup", "control", 0.62, 0.5),
                                  ("hard-r0.5", "mix", 0.60, 0.95), ("soft-s0.25", "mix", 0.70, 0.6)):
        fake_run(root, name, kind, None, 100, test_acc=test, val_acc=val, folder="screen")
    return AblationConfig(controls=["distill", "mixup"], mixes=["hard-r0.5", "soft-s0.25"], seeds=[0, 1], n_boot=200)


def test_mean_ci_uses_the_t_distribution():
    out = mean_ci([0.60, 0.62, 0.64])
    assert out["mean"] == pytest.approx(0.62)
    assert out["ci95"][0] == pytest.approx(0.62 - 4.303 * 0.02 / 3**0.5, abs=1e-4)
    assert mean_ci([0.1, 0.9])["ci95"] == [0.0, 1.0]  # clipped to the range of a share
    assert mean_ci([0.5])["ci95"] is None


def test_paired_bootstrap_sees_a_real_gain_and_no_gain():
    y = torch.arange(1000) % 7
    a = torch.where(torch.rand(2, 1000, generator=torch.Generator().manual_seed(0)) < 0.6, y, (y + 1) % 7)
    better = a.clone()
    better[:, :100] = y[:100]  # b fixes up to 100 extra images per seed
    gain = paired_bootstrap_over_seeds(y, a, better, n_boot=500)
    assert gain["difference"] > 0 and gain["ci95"][0] > 0 and gain["p_value"] < 0.05
    same = paired_bootstrap_over_seeds(y, a, a.clone(), n_boot=500)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    per_class = paired_bootstrap_over_seeds(y, a, better, "recall", n_boot=200, per_class=True)
    assert len(per_class["difference"]) == 7


def test_every_choice_is_made_on_val_and_the_headline_faces_the_best_control(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    abl = fake_study(tmp_path)
    fake_run(tmp_path, "real", "real", None, 7, test_acc=0.1, val_acc=0.1)  # a seed no longer in params: left out
    summary = run_report(abl, metrics_dir=tmp_path / "metrics", screen_dir=tmp_path / "screen",
                         out_dir=tmp_path / "reports", summary_metrics=tmp_path / "ablation.json", data_dir=tmp_path / "none")
    assert summary["best_arm_on_val"] == "soft-s0.25" and summary["best_control_on_val"] == "no_augment"
    assert summary["screen_choices"]["control"]["arm"] == "mixup" and summary["screen_choices"]["mix"]["arm"] == "soft-s0.25"
    mix = summary["arms"]["soft-s0.25"]
    assert mix["seeds"] == [0, 1] and summary["arms"]["real"]["seeds"] == [0, 1]
    assert mix["vs_real"]["accuracy"]["difference"] > 0.05 and mix["vs_real"]["accuracy"]["ci95"][0] > 0
    against = mix["vs_best_control"]
    assert against["control"] == "no_augment" and against["accuracy"]["difference"] < 0
    assert "vs_best_control" not in summary["arms"]["mixup"]  # controls are not compared with themselves
    assert set(mix["vs_real"]["recall"]) >= {"disgust", "fear"}
    verdict = json.loads((tmp_path / "ablation.json").read_text())["verdict"]
    assert "soft-s0.25" in verdict and "no_augment" in verdict and "do not beat" in verdict
    page = (tmp_path / "reports" / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "Teacher" in page
    md = (tmp_path / "reports" / "summary.md").read_text()
    assert "chosen on val" in md and "best control on val" in md and "## Screen (seed 100" in md
    assert "| **soft-s0.25** (chosen) | mix | 70" in md.replace("70.00", "70") or "**soft-s0.25** (chosen)" in md
    saved = json.loads((tmp_path / "reports" / "summary.json").read_text())
    assert saved["arms"]["soft-s0.25"]["vs_real"]["accuracy"] == mix["vs_real"]["accuracy"]
    assert (tmp_path / "reports/plots/accuracy_by_arm.csv").read_text().startswith("arm,accuracy,macro_f1")
    assert best_arm_on_val(summary["arms"]) == "soft-s0.25"


def test_no_runs_is_one_clear_error(tmp_path):
    from runtime.errors import UserError

    with pytest.raises(UserError, match="no ablation runs"):
        run_report(AblationConfig(), metrics_dir=tmp_path / "empty", screen_dir=tmp_path / "empty")


def test_a_control_better_on_test_is_named_in_the_headline(tmp_path, monkeypatch):
    """Val picks the best control; when another control scores higher on test than the chosen mix, the
    headline says so instead of claiming the mix beats every control."""
    from ablation.render import verdict
    from ablation.statistics import arm_statistics, load_runs

    monkeypatch.chdir(tmp_path)
    for seed in (0, 1):
        fake_run(tmp_path, "real", "real", None, seed, test_acc=0.50, val_acc=0.50)
        fake_run(tmp_path, "no_augment", "no_augment", None, seed, test_acc=0.90, val_acc=0.55)
        fake_run(tmp_path, "distill", "control", None, seed, test_acc=0.60, val_acc=0.70)
        fake_run(tmp_path, "soft-s0.25", "mix", None, seed, test_acc=0.80, val_acc=0.75)
    table = arm_statistics(load_runs(tmp_path / "metrics"), 200)
    text = verdict(table, "soft-s0.25")
    assert "best control chosen on val" in text and "distill" in text
    assert "Note: no_augment scores higher on test" in text
