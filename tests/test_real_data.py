"""A short real-data run: half a minute of FER2013 training must beat chance (14%) by a clear margin."""

from __future__ import annotations

import pytest
import torch

from classifiers.config import TrainConfig
from classifiers.metrics import evaluate_predictions
from classifiers.training import predict_proba, train_classifier
from facedata.sources.fer2013_csv import read_fer2013_csv
from tests.conftest import FER2013, needs_fer2013


@needs_fer2013
@pytest.mark.slow
def test_short_fer2013_training_beats_chance():
    splits = read_fer2013_csv(FER2013).splits
    x, y = splits["train"]
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:6000]
    vx, vy = splits["val"]
    tx, ty = splits["test"]
    cfg = TrainConfig(arch="vgg_fer", width=0.25, epochs=3, batch_size=64, optimizer="adamw", lr=2e-3,
                      weight_decay=0.01, tta="none", threads=2,
                      augment={"crop_padding": 0, "rotation_deg": 0, "scale": 0, "brightness": 0, "contrast": 0,
                               "erasing_p": 0})
    result = train_classifier(x[idx], y[idx], vx[:1000], vy[:1000], cfg, progress=False)
    report = evaluate_predictions(ty, predict_proba(result.model, tx, cfg).argmax(1), n_boot=200)
    assert report["accuracy_ci95"][0] > 0.30, report["accuracy"]  # chance is 0.143; majority class 0.245
