"""fersynth predict on video: a demo face moving across a noisy scene keeps one track id, its boxes follow it,
its probabilities are smoothed over the window asked for; bad videos and a missing camera fail cleanly."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from classifiers.architectures import build_model
from classifiers.config import TrainConfig
from classifiers.saved_model import save_classifier
from facedata.sources.demo_faces import draw_demo_faces
from runtime.labels import EXPRESSIONS
from tools.planted_faces import iou
from tools.video import CSV_COLUMNS, FaceTracker, run_video

FPS = 12.0
FRAMES = 24
SIZE = (320, 240)  # width, height
FACE = 80
STEP = (3, 1)  # pixels per frame, x and y


def write_moving_face_video(path, fourcc: str = "mp4v") -> list[tuple[int, int, int, int]]:
    """A demo face pasted into smooth colour noise, moving STEP pixels per frame; returns its box in each frame."""
    import cv2

    face, _ = draw_demo_faces(1, seed=5)
    patch = cv2.resize(face[0, 0].numpy(), (FACE, FACE), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    width, height = SIZE
    scene = cv2.GaussianBlur(rng.normal(128, 40, (height, width, 3)).clip(0, 255).astype(np.uint8), (0, 0), 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, SIZE)
    boxes = []
    for t in range(FRAMES):
        x, y = 60 + STEP[0] * t, 50 + STEP[1] * t
        frame = scene.copy()
        frame[y : y + FACE, x : x + FACE] = patch[..., None]
        writer.write(frame)
        boxes.append((x, y, FACE, FACE))
    writer.release()
    return boxes


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "walk.mp4"
    return path, write_moving_face_video(path)


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    torch.manual_seed(0)
    save_classifier(path, build_model("compact_cnn", width=0.25).eval(), TrainConfig(arch="compact_cnn", width=0.25, tta="none"))
    return path


def invoke(args: list[str]):
    import pipelines.cli_tools  # noqa: F401  (registers the commands)
    from pipelines.cli import app

    return CliRunner().invoke(app, args)


def read_rows(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def probabilities(rows: list[dict]) -> np.ndarray:
    return np.array([[float(r[name]) for name in EXPRESSIONS] for r in rows])


def jitter(p: np.ndarray) -> float:
    """Mean L1 change of the probabilities from one frame to the next."""
    return float(np.abs(np.diff(p, axis=0)).sum(1).mean())


def test_moving_face_keeps_one_track_and_its_probabilities_are_smoothed(tmp_path, video, tiny_model_file, one_thread):
    import cv2

    path, planted = video
    smooth = 5
    raw = invoke(["predict", str(path), "--model", str(tiny_model_file), "--smooth", "1", "--csv", str(tmp_path / "raw.csv")])
    assert raw.exit_code == 0, raw.output
    result = invoke(["predict", str(path), "--model", str(tiny_model_file), "--smooth", str(smooth), "--csv", str(tmp_path / "out.csv"),
                     "--annotate-video", str(tmp_path / "out.mp4")])
    assert result.exit_code == 0, result.output
    assert f"{FRAMES} frames" in result.stdout and "1 track(s)" in result.stdout

    columns, rows = read_rows(tmp_path / "out.csv")
    assert tuple(columns) == CSV_COLUMNS
    frames = [int(r["frame"]) for r in rows]
    assert len(frames) == len(set(frames)) >= FRAMES - 2  # one row per frame with the face; it is missed at most twice
    assert {r["track"] for r in rows} == {"1"}
    for r in rows:
        assert float(r["time_s"]) == pytest.approx(int(r["frame"]) / FPS, abs=1e-4)
    overlaps = [iou(tuple(int(r[k]) for k in "xywh"), planted[int(r["frame"])]) for r in rows]
    assert sum(o >= 0.5 for o in overlaps) >= 0.9 * FRAMES, overlaps
    # the boxes follow the face: it moves 69 px right in all, the boxes too
    first, last = rows[0], rows[-1]
    assert int(last["x"]) - int(first["x"]) == pytest.approx(STEP[0] * (int(last["frame"]) - int(first["frame"])), abs=8)

    smoothed = probabilities(rows)
    assert np.allclose(smoothed.sum(1), 1, atol=1e-3)
    for r, p in zip(rows, smoothed):
        assert r["expression"] == EXPRESSIONS[int(p.argmax())] and float(r["confidence"]) == pytest.approx(p.max(), abs=1e-5)
    _, raw_rows = read_rows(tmp_path / "raw.csv")
    assert [(r["frame"], r["x"], r["y"], r["w"]) for r in raw_rows] == [(r["frame"], r["x"], r["y"], r["w"]) for r in rows]
    unsmoothed = probabilities(raw_rows)
    # each smoothed row is the mean of the last `smooth` raw rows of its track
    for i in range(len(rows)):
        assert np.allclose(smoothed[i], unsmoothed[max(0, i - smooth + 1) : i + 1].mean(0), atol=2e-5)
    assert jitter(smoothed) < 0.5 * jitter(unsmoothed), (jitter(smoothed), jitter(unsmoothed))

    annotated = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert annotated.isOpened()
    size = (int(annotated.get(cv2.CAP_PROP_FRAME_WIDTH)), int(annotated.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    count = 0
    while annotated.read()[0]:
        count += 1
    assert (size, count) == (SIZE, FRAMES)
    assert annotated.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.mp4", "raw.csv"]  # no temporary files left


def test_camera_run_stopped_by_ctrl_c_still_writes_its_outputs(tmp_path, video, tiny_model_file, monkeypatch, one_thread):
    """A camera has no end: Ctrl-C stops it, and what was seen so far is written (times from the wall clock)."""
    import cv2

    class Camera:  # the test video, then Ctrl-C while reading the 9th frame
        def __init__(self) -> None:
            self.capture, self.reads = cv2.VideoCapture(str(video[0])), 0

        def read(self):
            self.reads += 1
            if self.reads > 8:
                raise KeyboardInterrupt
            return self.capture.read()

        def get(self, prop: int) -> float:
            return self.capture.get(prop)

        def release(self) -> None:
            self.capture.release()

    monkeypatch.setattr("tools.video.open_source", lambda source: Camera())
    summary = run_video(0, tiny_model_file, tmp_path / "cam.csv", tmp_path / "cam.mp4")
    assert (summary.source, summary.stopped, summary.frames) == ("camera 0", True, 8)
    _, rows = read_rows(tmp_path / "cam.csv")
    times = [float(r["time_s"]) for r in rows]
    assert len(rows) >= 7 and times == sorted(times) and times[-1] < summary.seconds
    assert cv2.VideoCapture(str(tmp_path / "cam.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 8


def test_tracker_keeps_ids_opens_new_ones_and_drops_lost_tracks():
    """Association alone (a full detection on every frame): ids follow IoU, a face gone too long comes back as new."""

    class Scripted:
        def __init__(self, frames):
            self.frames = iter(frames)

        def detect(self, gray):
            return np.array(next(self.frames), dtype=np.int64).reshape(-1, 4)

    a = [(10 + 4 * t, 10, 40, 40) for t in range(6)]
    b = (200, 100, 50, 50)
    frames = [[a[0]], [a[1], b], [b, a[2]], [a[3]], [a[4]], [a[5]], [], [], [b]]
    tracker = FaceTracker(Scripted(frames), detect_every=1, smooth=3, max_missed=2)
    seen, alive = [], []
    for i in range(len(frames)):
        seen.append([(t.id, t.box) for t in tracker.update(np.zeros((1, 1), np.uint8), i)])
        alive.append([t.id for t in tracker.tracks])
    assert seen[:4] == [[(1, a[0])], [(1, a[1]), (2, b)], [(1, a[2]), (2, b)], [(1, a[3])]]
    assert alive == [[1], [1, 2], [1, 2], [1, 2], [1, 2], [1], [1], [1], [3]]  # b dropped after 3 misses (> 2)
    assert seen[8] == [(3, b)]  # b again, too late for its old id


def test_bad_videos_fail_with_one_line_and_write_nothing(tmp_path, tiny_model_file):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 10)
    out = tmp_path / "out"
    for video in (tmp_path / "missing.mp4", broken):
        result = invoke(["predict", str(video), "--model", str(tiny_model_file), "--csv", str(out / "p.csv"),
                         "--annotate-video", str(out / "p.mp4")])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and video.name in lines[0], result.stderr
        assert "Traceback" not in result.output
        assert not out.exists() or list(out.iterdir()) == []


def test_missing_camera_is_one_clear_error(tmp_path, tiny_model_file):
    result = invoke(["predict", "--camera", "9", "--model", str(tiny_model_file), "--csv", str(tmp_path / "p.csv")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "error: camera 9: cannot be opened (no camera with that index, or it is in use)"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["a.mp4", "b.jpg"], ["a.mp4", "b.mp4"], ["a.mp4", "--json", "p.json"],
                                  ["a.jpg", "--csv", "p.csv"], ["a.mp4", "--camera", "0"]])
def test_photo_and_video_options_do_not_mix(tmp_path, args):
    result = invoke(["predict", *[str(tmp_path / a) if "." in a else a for a in args], "--model", str(tmp_path / "none.safetensors")])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []
