"""Metrics against scikit-learn on fixed predictions; bootstrap intervals; temperature scaling."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from classifiers.calibration import expected_calibration_error, fit_temperature, nll
from classifiers.metrics import confusion_matrices, evaluate_predictions, paired_bootstrap_difference, scores_from_confusion


@pytest.fixture
def predictions():
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 7, (500,), generator=g)
    noise = torch.randint(0, 7, (500,), generator=g)
    pred = torch.where(torch.rand(500, generator=g) < 0.6, y, noise)
    pred[pred == 1] = 2  # class 1 never predicted: exercises zero division
    return y, pred


def test_scores_match_sklearn(predictions):
    y, pred = predictions
    cm = confusion_matrices(y, pred, 7)
    assert cm.tolist() == confusion_matrix(y, pred, labels=range(7)).tolist()
    s = scores_from_confusion(cm)
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=range(7), zero_division=0)
    assert float(s["accuracy"]) == pytest.approx(accuracy_score(y, pred))
    assert float(s["macro_f1"]) == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert s["precision"].tolist() == pytest.approx(p.tolist())
    assert s["recall"].tolist() == pytest.approx(r.tolist())
    assert s["f1"].tolist() == pytest.approx(f.tolist())


def test_batched_confusion_equals_loop(predictions):
    y, pred = predictions
    index = torch.randint(0, len(y), (5, len(y)), generator=torch.Generator().manual_seed(0))
    batched = confusion_matrices(y, pred, 7, index)
    for b in range(5):
        assert torch.equal(batched[b], confusion_matrices(y[index[b]], pred[index[b]], 7))


def test_bootstrap_interval_contains_point_and_shrinks_with_n(predictions):
    y, pred = predictions
    small = evaluate_predictions(y[:100], pred[:100], n_boot=500)
    large = evaluate_predictions(y, pred, n_boot=500)
    for rep in (small, large):
        lo, hi = rep["accuracy_ci95"]
        assert lo <= rep["accuracy"] <= hi
    width = lambda r: r["accuracy_ci95"][1] - r["accuracy_ci95"][0]  # noqa: E731
    assert width(large) < width(small)
    assert large["per_class"]["disgust"]["precision"] == 0.0
    assert sum(v["support"] for v in large["per_class"].values()) == 500


def test_paired_difference_detects_a_real_gain(predictions):
    y, pred = predictions
    better = pred.clone()
    better[:100] = y[:100]
    res = paired_bootstrap_difference(y, pred, better, n_boot=1000)
    assert res["difference"] > 0 and res["ci95"][0] > 0 and res["p_value"] < 0.01
    same = paired_bootstrap_difference(y, pred, pred, n_boot=200)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def test_temperature_scaling_lowers_nll_of_overconfident_logits():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 7, (2000,), generator=g)
    logits = torch.randn(2000, 7, generator=g)
    logits[torch.arange(2000), y] += 1.5
    logits = logits * 4  # overconfident
    t = fit_temperature(logits, y)
    assert t > 1.5
    assert nll(logits, y, t) < nll(logits, y) - 0.1
    assert expected_calibration_error((logits / t).softmax(1), y) < expected_calibration_error(logits.softmax(1), y)
