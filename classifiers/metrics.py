"""Classification metrics from confusion matrices, with bootstrap confidence intervals.

Written on torch tensors rather than called per resample from scikit-learn because the bootstrap
needs thousands of resamples: one batched bincount builds all their confusion matrices at once.
The tests check every value against scikit-learn on fixed predictions.
"""

from __future__ import annotations

import torch

from runtime.labels import EXPRESSIONS


def confusion_matrices(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int, index: torch.Tensor | None = None) -> torch.Tensor:
    """Confusion matrix [true, pred]; with `index` (B x N resample indices), B matrices at once."""
    if index is None:
        return torch.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)
    b = index.shape[0]
    flat = (torch.arange(b).unsqueeze(1) * num_classes**2 + y_true[index] * num_classes + y_pred[index]).reshape(-1)
    return torch.bincount(flat, minlength=b * num_classes**2).reshape(b, num_classes, num_classes)


def scores_from_confusion(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """accuracy, macro_f1, and per-class precision/recall/f1 for one (K x K) or many (B x K x K) matrices.

    A class with no predictions has precision 0, one with no true samples recall 0 (sklearn's
    zero_division=0); macro-F1 averages over classes present in y_true or y_pred (sklearn's labels).
    """
    cm = cm.double()
    tp = cm.diagonal(dim1=-2, dim2=-1)
    true_n = cm.sum(-1)
    pred_n = cm.sum(-2)
    total = cm.sum((-2, -1))
    precision = torch.where(pred_n > 0, tp / pred_n.clamp(min=1), 0.0)
    recall = torch.where(true_n > 0, tp / true_n.clamp(min=1), 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), 0.0)
    present = (true_n + pred_n) > 0
    macro_f1 = (f1 * present).sum(-1) / present.sum(-1).clamp(min=1)
    return {"accuracy": tp.sum(-1) / total, "macro_f1": macro_f1, "precision": precision, "recall": recall, "f1": f1}


def bootstrap_index(n: int, n_boot: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (n_boot, n), generator=g)


def evaluate_predictions(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int = 7,
                         n_boot: int = 1000, seed: int = 0, class_names=EXPRESSIONS) -> dict:
    """Point estimates plus 95% percentile-bootstrap intervals over the test images."""
    cm = confusion_matrices(y_true, y_pred, num_classes)
    point = scores_from_confusion(cm)
    boot = scores_from_confusion(confusion_matrices(y_true, y_pred, num_classes, bootstrap_index(len(y_true), n_boot, seed)))

    def ci(values: torch.Tensor) -> list[float]:
        lo, hi = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=values.dtype), dim=0)
        return [round(float(lo), 5), round(float(hi), 5)]

    per_class = {
        name: {
            "precision": round(float(point["precision"][k]), 5),
            "recall": round(float(point["recall"][k]), 5),
            "recall_ci95": ci(boot["recall"][:, k]),
            "f1": round(float(point["f1"][k]), 5),
            "support": int(cm[k].sum()),
        }
        for k, name in enumerate(class_names[:num_classes])
    }
    return {
        "n": int(len(y_true)),
        "accuracy": round(float(point["accuracy"]), 5),
        "accuracy_ci95": ci(boot["accuracy"]),
        "macro_f1": round(float(point["macro_f1"]), 5),
        "macro_f1_ci95": ci(boot["macro_f1"]),
        "per_class": per_class,
        "confusion": cm.tolist(),
    }


def paired_bootstrap_difference(y_true: torch.Tensor, pred_a: torch.Tensor, pred_b: torch.Tensor, metric: str = "accuracy",
                                num_classes: int = 7, n_boot: int = 2000, seed: int = 0) -> dict:
    """Difference b - a on the same test images, resampled together; two-sided bootstrap p-value."""
    return paired_bootstrap_over_seeds(y_true, pred_a[None], pred_b[None], metric, num_classes, n_boot, seed)


def paired_bootstrap_over_seeds(y_true: torch.Tensor, preds_a: torch.Tensor, preds_b: torch.Tensor,
                                metric: str = "accuracy", num_classes: int = 7, n_boot: int = 2000,
                                seed: int = 0, per_class: bool = False) -> dict:
    """Seed-averaged difference b - a (S x N predictions of the same seeds on the same test images),
    resampling test images jointly for every seed and both arms; two-sided bootstrap p-value.

    metric: accuracy | macro_f1 | recall (per_class=True gives one difference per class)."""
    index = bootstrap_index(len(y_true), n_boot, seed)

    def averaged(preds: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        vals = [scores_from_confusion(confusion_matrices(y_true, p, num_classes, idx))[metric] for p in preds]
        return torch.stack(vals).mean(0)

    diff = averaged(preds_b, index) - averaged(preds_a, index)
    point = averaged(preds_b, None) - averaged(preds_a, None)
    q = torch.tensor([0.025, 0.975], dtype=diff.dtype)
    lo, hi = torch.quantile(diff, q, dim=0)
    p = 2 * torch.minimum((diff <= 0).double().mean(0), (diff >= 0).double().mean(0))
    p = p.clamp(max=1.0)
    if per_class:
        return {"difference": point.tolist(), "ci95": [lo.tolist(), hi.tolist()], "p_value": p.tolist()}
    return {"difference": round(float(point), 5), "ci95": [round(float(lo), 5), round(float(hi), 5)],
            "p_value": round(float(p), 5)}
