"""Shared fixtures. Real-data tests read FER2013 from ../shared and skip cleanly where it is absent."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FER2013 = Path(os.environ.get("FERSYNTH_FER2013", REPO.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"))
needs_fer2013 = pytest.mark.skipif(not FER2013.is_file(), reason=f"FER2013 not found at {FER2013} (set FERSYNTH_FER2013)")


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (tiny models), restoring the caller's setting after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fer_rows() -> dict[str, list[tuple[str, str]]]:
    """A slice of real FER2013 rows per Usage: {usage: [(emotion, pixels), ...]} (70 per class-ish)."""
    if not FER2013.is_file():
        pytest.skip(f"FER2013 not found at {FER2013}")
    rows: dict[str, list[tuple[str, str]]] = {"Training": [], "PublicTest": [], "PrivateTest": []}
    per_class: dict[tuple[str, str], int] = {}
    with gzip.open(FER2013, "rt") as f:
        next(f)
        for line in f:
            emotion, pixels, usage = line.rstrip("\n").split(",")
            limit = 20 if usage == "Training" else 6
            key = (usage, emotion)
            if per_class.get(key, 0) < limit:
                per_class[key] = per_class.get(key, 0) + 1
                rows[usage].append((emotion, pixels))
            if len(per_class) == 21 and all(v >= (20 if k[0] == "Training" else 6) for k, v in per_class.items()):
                break
    return rows


def write_fer_csv(path: Path, rows: dict[str, list[tuple[str, str]]], header: str = "emotion,pixels,Usage") -> Path:
    cols = [c.strip() for c in header.split(",")]
    lines = [header]
    for usage, items in rows.items():
        for emotion, pixels in items:
            values = {"emotion": emotion, "pixels": pixels, "Usage": usage}
            lines.append(",".join(values[c] for c in cols))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_params(params_path: Path, **data) -> Path:
    """A params.yaml whose data section is `data` (other sections at their defaults)."""
    params_path.write_text(yaml.safe_dump({"data": data}))
    return params_path


def train_tiny_classifier(epochs: int):
    """(model, cfg, val set) of a compact_cnn x0.25 trained briefly on demo faces with one thread."""
    import torch

    from classifiers.augment import AugmentConfig
    from classifiers.config import TrainConfig
    from classifiers.training import train_classifier
    from facedata.prepared import LabelledImages
    from facedata.sources.demo_faces import draw_demo_faces

    before = torch.get_num_threads()
    x, y = draw_demo_faces(60, seed=1)
    xv, yv = draw_demo_faces(20, seed=2)
    cfg = TrainConfig(arch="compact_cnn", width=0.25, epochs=epochs, batch_size=32, optimizer="adamw", lr=3e-3,
                      warmup_epochs=0, label_smoothing=0, dropout=0, device="cpu", threads=1, amp=False,
                      tta="none", augment=AugmentConfig.off())
    model = train_classifier(x, y, xv, yv, cfg, progress=False).model
    torch.set_num_threads(before)
    return model, cfg, LabelledImages(xv, yv)
