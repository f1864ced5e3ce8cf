"""Soft labels from the teacher (the judge: trained on real train, temperature-calibrated on val).

A face's soft target is (1 - w) one-hot(label) + w softmax(logits / (T_judge * T)): the judge's calibrated
probabilities, sharpened or softened by the ablation's `teacher_temperature` T and mixed with the face's
own label by w (`soft_weight` for synthetic faces, `distill_weight` for the distillation control).
Computed once per arm on the unaugmented faces and kept fixed while they are augmented (offline soft
labels, as in Zheng et al. 2017's LSRO and Gowal et al. 2021's pseudo-labels).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from classifiers.judge import load_judge


def teacher_probabilities(judge_path: Path, images_uint8: torch.Tensor, temperature: float) -> torch.Tensor:
    judge = load_judge(Path(judge_path))
    return torch.softmax(judge.logits(images_uint8) / (judge.temperature * temperature), dim=1)


def soft_targets(labels: torch.Tensor, teacher: torch.Tensor, weight: float) -> torch.Tensor:
    return (1 - weight) * F.one_hot(labels, teacher.shape[1]).float() + weight * teacher
