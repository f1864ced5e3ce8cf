"""CAS before and after filtering: does the filter keep faces a classifier can learn expressions from?

CAS (classification accuracy score, Ravuri & Vinyals 2019; "GAN-train" in Shmelkov et al. 2018):
train a classifier on synthetic faces only, select it on real val, score it on real test. The
filter stage measures it twice on equally many faces per class, so the difference is the filter's
doing and not a difference in set size:

  before  a seeded sample of everything generated,
  after   a seeded sample of the faces the filter kept,

each with min(real train count, kept count) faces of a class (the real class mix as far as the
kept set allows), the judge's architecture and hyperparameters, and `filter.cas_steps` optimisation
steps. The two classifiers are compared on the same real test faces with a paired bootstrap.

The ablation's `synthetic_only` arm measures CAS of the filtered set across seeds; this one is the
filter's own before/after reading, one seed, in the filter stage's quality.json.
"""

from __future__ import annotations

import torch
from rich.console import Console

from classifiers.config import TrainConfig
from classifiers.metrics import evaluate_predictions, paired_bootstrap_difference
from classifiers.training import predict_proba, train_classifier
from facedata.merge import class_permutations
from facedata.prepared import LabelledImages
from runtime.labels import EXPRESSIONS


def cas_accuracy(quality: dict, when: str, missing: str | None = "n/a") -> float | str | None:
    """CAS accuracy for `when` ("before"/"after") from a quality.json, or `missing` where CAS was off."""
    cas = quality.get("cas")
    return cas.get(when, {}).get("accuracy", missing) if isinstance(cas, dict) else missing


def cas_counts(real_labels: torch.Tensor, kept_labels: torch.Tensor) -> list[int]:
    """Faces per class for both CAS sets: the real train count, capped by what the filter kept."""
    real = torch.bincount(real_labels, minlength=len(EXPRESSIONS))
    kept = torch.bincount(kept_labels, minlength=len(EXPRESSIONS))
    return torch.minimum(real, kept).tolist()


def cas_sample(labels: torch.Tensor, counts: list[int], seed: int) -> torch.Tensor:
    """Indices of a seeded per-class sample with `counts` faces of each class."""
    perms = class_permutations(labels, seed)
    return torch.cat([p[:c] for p, c in zip(perms, counts)])


def cas_config(judge_cfg: TrainConfig, steps: int, rounds: int, seed: int) -> TrainConfig:
    """The judge's recipe on a step budget: equal updates for both sets, no wall-clock cap."""
    return judge_cfg.model_copy(update={"steps": steps, "epochs": rounds, "seed": seed, "max_minutes": None})


def cas_score(cfg: TrainConfig, train: LabelledImages, val: LabelledImages, test: LabelledImages
              ) -> tuple[dict, torch.Tensor]:
    """Train on `train` (synthetic), select on real val, report on real test: (summary, test predictions)."""
    result = train_classifier(*train, *val, cfg, progress=True)
    pred = predict_proba(result.model, test.images, cfg).argmax(1)
    report = evaluate_predictions(test.labels, pred, seed=cfg.seed)
    summary = {"accuracy": report["accuracy"], "accuracy_ci95": report["accuracy_ci95"],
               "macro_f1": report["macro_f1"], "macro_f1_ci95": report["macro_f1_ci95"],
               "recall": {name: v["recall"] for name, v in report["per_class"].items()},
               "val_accuracy": result.best_val.get("accuracy"),
               "n_train": len(train), "steps": result.steps}
    return summary, pred


def cas_before_after(judge_cfg: TrainConfig, steps: int, rounds: int, seed: int, fake: LabelledImages,
                     kept: torch.Tensor, real: dict[str, LabelledImages], console: Console | None = None) -> dict:
    """CAS of the generated set and of the kept set on equal per-class counts, and their paired difference."""
    console = console or Console(stderr=True)
    counts = cas_counts(real["train"].labels, fake.labels[kept])
    cfg = cas_config(judge_cfg, steps, rounds, seed)
    kept_index = torch.nonzero(kept).flatten()
    sets = {"before": fake.subset(cas_sample(fake.labels, counts, seed)),
            "after": fake.subset(kept_index[cas_sample(fake.labels[kept_index], counts, seed)])}
    out: dict = {"n_per_class": dict(zip(EXPRESSIONS, counts)), "steps": steps, "rounds": rounds, "seed": seed,
                 "recipe": f"judge's {judge_cfg.arch} recipe, {steps} steps, selected on real val, scored on real test"}
    preds = {}
    for when, train in sets.items():
        if len(train) == 0:
            console.print(f"[yellow]warning:[/] CAS {when} filtering skipped: no synthetic faces to train on")
            return out | {"skipped": "no kept synthetic faces"}
        console.print(f"filter: CAS {when} filtering, {len(train)} synthetic faces, {steps} steps")
        out[when], preds[when] = cas_score(cfg, train, real["val"], real["test"])
    out["after_minus_before"] = paired_bootstrap_difference(real["test"].labels, preds["before"], preds["after"], seed=seed)
    return out
