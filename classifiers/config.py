"""Typed training configuration for expression classifiers (a `params.yaml` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from classifiers.augment import AugmentConfig
from runtime.config import Section


class TrainConfig(Section):
    """How to build and train one classifier. Every field has a params.yaml key of the same name; the
    whole section is the fingerprint (epochs and steps shape the learning-rate schedule)."""

    arch: Literal["compact_cnn", "vgg_fer", "resnet18", "mobilenet_v3_small"] = "vgg_fer"
    width: float = Field(1.0, gt=0, le=4)
    attention: Literal["none", "se", "cbam"] = "none"
    dropout: float = Field(0.3, ge=0, lt=1)
    pretrained: bool = False

    epochs: int = Field(30, ge=1)
    # A fixed number of optimisation steps, whatever the training-set size: training then runs in
    # `epochs` rounds of ceil(steps / epochs) steps (val selection after each round), so arms with
    # different amounts of data get equal updates and equal checkpoints to select from.
    steps: int | None = Field(None, ge=1)
    batch_size: int = Field(128, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "plateau"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    class_weighting: Literal["none", "inverse", "sqrt_inverse"] = "none"
    balanced_sampling: bool = False
    select_by: Literal["accuracy", "macro_f1"] = "accuracy"
    tta: Literal["none", "flip", "flip_crops"] = "flip"  # test-time views for reported numbers
    val_tta: Literal["none", "flip", "flip_crops"] = "none"  # views for the per-epoch val selection (cheaper)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    seed: int = 0
    max_minutes: float | None = Field(None, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    amp: bool = True  # bf16 autocast for training steps on CUDA and on CPUs with native bf16
    # bf16 for val selection and the reported predictions too (same hardware condition): ~1.7x faster
    # evaluation on 2 cores, but ~0.5-1% of argmaxes can flip against float32, so off unless a preset
    # needs the time (the CPU study does)
    eval_amp: bool = False
    channels_last: bool = True  # the training steps' memory layout (faster on CUDA and on CPU, bf16 or not)
