"""Tests for the procedurally drawn demo faces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facedata.sources.demo_faces import CLASS_NAMES, draw_demo_faces
from runtime.errors import UserError

N_CLASSES = len(CLASS_NAMES)


@pytest.fixture(scope="module")
def train_set() -> tuple[torch.Tensor, torch.Tensor]:
    return draw_demo_faces(200, seed=1)


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    return draw_demo_faces(100, seed=2)


def _features(images: torch.Tensor) -> torch.Tensor:
    """Raw pixels at half resolution, standardised per image, plus a constant."""
    x = F.avg_pool2d(images.float() / 255.0, 2).flatten(1)
    x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)
    return torch.cat([x, torch.ones(len(x), 1)], dim=1)  # and a bias feature


def test_class_names_follow_fer2013_order() -> None:
    assert CLASS_NAMES == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_one_count_for_all_classes() -> None:
    images, labels = draw_demo_faces(5, seed=0)
    assert images.shape == (5 * N_CLASSES, 1, 48, 48)
    assert images.dtype == torch.uint8
    assert labels.shape == (5 * N_CLASSES,)
    assert labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=N_CLASSES).tolist() == [5] * N_CLASSES
    assert not torch.equal(labels, labels.sort().values), "labels should be shuffled"


def test_per_class_counts() -> None:
    counts = (1, 2, 3, 0, 4, 5, 6)
    images, labels = draw_demo_faces(counts, seed=0)
    assert images.shape == (sum(counts), 1, 48, 48)
    assert torch.bincount(labels, minlength=N_CLASSES).tolist() == list(counts)


def test_zero_images() -> None:
    images, labels = draw_demo_faces(0, seed=0)
    assert images.shape == (0, 1, 48, 48) and images.dtype == torch.uint8
    assert labels.shape == (0,) and labels.dtype == torch.int64


@pytest.mark.parametrize("counts", [-1, 2.5, True, "7", [1] * 6, [1, 2, 3, 4, 5, 6, -7], [1, 2, 3, 4, 5, 6, 7.0]])
def test_bad_counts_are_user_errors(counts: object) -> None:
    with pytest.raises(UserError, match="counts"):
        draw_demo_faces(counts, seed=0)  # type: ignore[arg-type]


def test_images_are_neither_blank_nor_saturated(test_set: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = test_set
    assert set(labels.tolist()) == set(range(N_CLASSES))
    x = images.float() / 255.0
    assert x.std(dim=(1, 2, 3)).min() > 0.05
    means = x.mean(dim=(1, 2, 3))
    assert means.min() > 0.1 and means.max() < 0.9
    saturated = ((images == 0) | (images == 255)).float().mean(dim=(1, 2, 3))
    assert saturated.max() < 0.5 and saturated.mean() < 0.1
    assert len(torch.unique(images[0])) > 50, "images should have soft edges, lighting and noise"


def test_same_seed_same_bytes() -> None:
    first = draw_demo_faces((3, 1, 4, 1, 5, 9, 2), seed=7)
    second = draw_demo_faces((3, 1, 4, 1, 5, 9, 2), seed=7)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_same_bytes_with_one_thread() -> None:
    threads = torch.get_num_threads()
    expected = draw_demo_faces(40, seed=3)
    try:
        torch.set_num_threads(1)
        single = draw_demo_faces(40, seed=3)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(expected[0], single[0]) and torch.equal(expected[1], single[1])


def test_different_seed_different_images() -> None:
    a_images, a_labels = draw_demo_faces(4, seed=0)
    b_images, b_labels = draw_demo_faces(4, seed=1)
    assert not torch.equal(a_images, b_images)
    assert not torch.equal(a_labels, b_labels)
    # Same class, different seed: still different pictures.
    a_first = a_images[a_labels == 3][0]
    b_first = b_images[b_labels == 3][0]
    assert (a_first.float() - b_first.float()).abs().mean() > 5.0


def test_linear_classifier_learns_but_does_not_solve_it(
    train_set: tuple[torch.Tensor, torch.Tensor], test_set: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """A ridge-regression classifier (one linear solve, so it stays fast on a busy machine)."""
    x_train, y_train = _features(train_set[0]), train_set[1]
    x_test, y_test = _features(test_set[0]), test_set[1]
    gram = x_train.T @ x_train + 100.0 * torch.eye(x_train.shape[1])
    weight = torch.linalg.solve(gram, x_train.T @ F.one_hot(y_train, N_CLASSES).float())
    accuracy = ((x_test @ weight).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.4, f"held-out accuracy {accuracy:.2f} is too close to chance (0.14)"
    assert accuracy < 0.95, f"a linear model on raw pixels should not solve it, got {accuracy:.2f}"


def test_classes_differ_in_the_mouth_region(test_set: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Between-class over within-class variance (a per-pixel F ratio, about 1 when classes do not
    matter) is high around the mouth and low in a background corner."""
    images, labels = test_set
    x = images[:, 0].float() / 255.0

    def f_ratio(region: torch.Tensor) -> float:
        groups = [region[labels == k] for k in range(N_CLASSES)]
        means = torch.stack([g.mean(0) for g in groups])
        within = torch.stack([g.var(0) for g in groups]).mean(0)
        return (means.var(0) * len(groups[0]) / within).mean().item()

    mouth = f_ratio(x[:, 28:43, 12:36])
    corner = f_ratio(x[:, :6, :6])
    assert mouth > 2.0 and mouth > 2.0 * corner, (mouth, corner)
