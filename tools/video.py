"""Expression prediction on video files and cameras: faces detected, tracked with stable ids, classified every frame.

The photo path's FaceDetector (2 cascades x 5 rotations over the whole frame) takes ~0.5 s for a 640x480
frame on 2 CPU threads (benchmarks/bench_video.py), so a video runs it only every `detect_every` frames. In between, each track is
followed by a local search: the detector's first cascade, upright only, in a window of the track's last box
widened by half its side on every side and rescaled so that the face is 48 px, for faces 2/3 to 3/2 of its
size (~3 ms per face). Measured against the alternatives: OpenCV's headless 4.x wheel has only one tracker
that needs no downloaded model, MIL, which took 33 ms per face and still reports success on a blank frame
(it cannot tell that a face left); plain IoU association needs the full detector on every frame. The local
search finds nothing when the face is gone, and what it finds is a face box of the same kind as the
detector's, so the crops match the photo path's. Its limit: a head tilted so far that only the rotated passes
find it is seen on detection frames only (its id is kept in between).

Tracks are matched to full detections greedily by IoU (torchvision's box_iou, >= 0.3, best pair first);
an unmatched detection opens a new id, and a track unseen for `max_missed` frames is dropped. A track is
reported (CSV row, box on the video) only in frames where it was found. All faces of a frame are classified
in one batched `predict_proba` call; a track's expression is the mean of its last `smooth` frames'
probabilities (a window rather than an exponential average: equal weights, a known lag of (k - 1) / 2
frames, and it still sums to 1).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import secrets
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from classifiers.config import TrainConfig
from runtime import atomic
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS
from tools.predict import FaceDetector, check_margin, classify_boxes, draw_labelled_boxes, load_model, to_gray

if TYPE_CHECKING:
    import cv2

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
WRITTEN_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v")  # containers that take mp4v (WebM takes only VP8/9, AV1)
CSV_COLUMNS = ("frame", "time_s", "track", "x", "y", "w", "h", "expression", "confidence", *EXPRESSIONS)
MATCH_IOU = 0.3  # a detection continues a track when their boxes overlap this much
SEARCH_PAD = 0.5  # local search window: the last box widened by this x its side on every side
SEARCH_FACE = 48  # the window is rescaled so that the last face is this many pixels wide
SEARCH_SIZES = (2 / 3, 3 / 2)  # face sizes looked for, relative to the last box
FALLBACK_FPS = 30.0  # for sources that report no frame rate (some cameras and streams)


@dataclass(eq=False)
class Track:
    """One face followed across frames: its id, last box x, y, w, h and its recent probabilities."""

    id: int
    box: tuple[int, int, int, int]
    history: deque[torch.Tensor]  # maxlen = the smoothing window
    missed: int = 0  # frames since it was last found

    def smoothed(self) -> torch.Tensor:
        """The mean of its last `smooth` frames' probabilities (fewer at the start of the track)."""
        return torch.stack(tuple(self.history)).mean(0)


class FaceTracker:
    """Faces of consecutive frames with stable ids: the full detector every `detect_every` frames, a local search between."""

    def __init__(self, detector: FaceDetector, detect_every: int = 5, smooth: int = 5, max_missed: int = 15) -> None:
        self.detector = detector
        self.detect_every = detect_every
        self.smooth = smooth
        # a face missed by one full detection keeps its id until the next one at least
        self.max_missed = max(max_missed, 2 * detect_every)
        self.tracks: list[Track] = []
        self.next_id = 1

    def update(self, gray: np.ndarray, index: int) -> list[Track]:
        """The tracks found in frame `index` (grayscale), by id; `index` counts from 0 without gaps."""
        if index % self.detect_every == 0:
            seen = self._associate(self.detector.detect(gray))
        else:
            seen = [track for track in self.tracks if self._follow(gray, track)]
        found = set(seen)  # Track compares (and hashes) by identity
        for track in self.tracks:
            track.missed = 0 if track in found else track.missed + 1
        self.tracks = [track for track in self.tracks if track.missed <= self.max_missed]
        return sorted(seen, key=lambda track: track.id)

    def _associate(self, boxes: np.ndarray) -> list[Track]:
        """Continue the tracks that full detections overlap (best IoU first), open a track for each other detection."""
        import torchvision

        detections = [tuple(box) for box in boxes.tolist()]
        matched: dict[int, Track] = {}
        if self.tracks and detections:
            iou = torchvision.ops.box_iou(_xyxy([t.box for t in self.tracks]), _xyxy(detections))
            while True:
                value, flat = iou.flatten().max(0)
                if value < MATCH_IOU:
                    break
                i, j = divmod(int(flat), iou.shape[1])
                matched[j] = self.tracks[i]
                iou[i, :] = -1
                iou[:, j] = -1
        seen = []
        for j, box in enumerate(detections):
            track = matched.get(j)
            if track is None:
                track = Track(self.next_id, box, deque(maxlen=self.smooth))
                self.next_id += 1
                self.tracks.append(track)
            track.box = box
            seen.append(track)
        return seen

    def _follow(self, gray: np.ndarray, track: Track) -> bool:
        """Look for the track's face near its last box; move the box there and say whether it was found."""
        import cv2
        import torchvision

        x, y, w, h = track.box
        side = max(w, h)
        pad = round(SEARCH_PAD * side)
        height, width = gray.shape
        left, top = max(0, x - pad), max(0, y - pad)
        window = gray[top : min(height, y + h + pad), left : min(width, x + w + pad)]
        if min(window.shape) < side // 2:  # the box has (nearly) left the frame
            return False
        scale = SEARCH_FACE / side
        window = cv2.resize(window, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        cfg = self.detector.cfg
        smallest, largest = (round(SEARCH_FACE * s) for s in SEARCH_SIZES)
        found = self.detector.cascades[0].detectMultiScale(
            window, scaleFactor=cfg.scale_factor, minNeighbors=cfg.min_neighbors, minSize=(smallest, smallest),
            maxSize=(largest, largest))
        boxes = [(left + fx / scale, top + fy / scale, fw / scale, fh / scale) for fx, fy, fw, fh in np.asarray(found).reshape(-1, 4)]
        if not boxes:
            return False
        overlap = torchvision.ops.box_iou(_xyxy([track.box]), _xyxy(boxes))[0]
        best = int(overlap.argmax())
        if overlap[best] < MATCH_IOU:
            return False
        track.box = tuple(round(v) for v in boxes[best])
        return True


def _xyxy(boxes: Sequence[Sequence[float]]) -> torch.Tensor:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)


@dataclass
class VideoSummary:
    source: str
    frames: int = 0
    frames_with_face: int = 0
    seconds: float = 0.0  # wall time of the whole loop: reading, detection, classification, writing
    stopped: bool = False  # a camera run ended by Ctrl-C
    track_frames: dict[int, int] = field(default_factory=dict)  # id: frames it was found in
    track_expressions: dict[int, Counter] = field(default_factory=dict)  # id: smoothed expression counts

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def video_source(paths: Sequence[Path], camera: int | None) -> Path | int | None:
    """What `predict` runs on: a camera index, one video file (by suffix), or None for photos.

    Mixing is refused: a video's outputs (a per-frame CSV, an annotated video) are not the photos' (JSON, PNGs).
    """
    videos = [Path(p) for p in paths if Path(p).suffix.lower() in VIDEO_SUFFIXES]
    if camera is not None:
        if paths:
            raise UserError(f"pass either --camera or files, not both (got --camera {camera} and {len(paths)} path(s))")
        return camera
    if not videos:
        return None
    if len(paths) > 1:
        raise UserError(f"pass one video at a time, without photos (got {len(paths)} paths, {len(videos)} of them videos)")
    return videos[0]


@contextlib.contextmanager
def _opencv_quiet() -> Iterator[None]:
    """OpenCV's own warnings off: a missing camera logs two C++ lines before our one line says what is wrong."""
    import cv2

    before = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(before)


def open_source(source: Path | int) -> cv2.VideoCapture:
    """An opened cv2.VideoCapture of a camera index or a video file, or a UserError naming it."""
    import cv2

    # libav's own complaints ("moov atom not found") would precede our line; read once, at its first use
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if isinstance(source, int):
        with _opencv_quiet():
            capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            raise UserError(f"camera {source}: cannot be opened (no camera with that index, or it is in use)")
        return capture
    if not source.is_file():
        raise UserError(f"{source}: no such video file")
    with _opencv_quiet():
        capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise UserError(f"{source}: not a readable video (unknown format or corrupt file)")
    return capture


@contextlib.contextmanager
def _writable(path: Path) -> Iterator[None]:
    """An output that cannot be created (folder not writable, a file where a folder should be) as a UserError."""
    try:
        yield
    except OSError as e:
        raise UserError(f"{path}: cannot be written ({e.strerror or e})") from None


@contextlib.contextmanager
def atomic_video_writer(path: Path, fps: float, size: tuple[int, int]) -> Iterator[cv2.VideoWriter]:
    """A cv2.VideoWriter (mp4v) writing to a hidden sibling of `path`, renamed to `path` on success.

    Not runtime.atomic.atomic_path: its temporary name ends in .tmp, and OpenCV picks the container by suffix.
    """
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
    with _opencv_quiet():
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    try:
        if not writer.isOpened():
            raise UserError(f"{path}: OpenCV cannot write a video there")
        yield writer
        writer.release()
        os.replace(tmp, path)
    finally:
        writer.release()
        tmp.unlink(missing_ok=True)


def run_video(source: Path | int, model_path: Path, csv_path: Path | None = None, video_path: Path | None = None,
              margin: float = 0.0, tta: str | None = None, detect_every: int = 5, smooth: int = 5, max_frames: int = 0) -> VideoSummary:
    """Track and classify the faces of every frame; write the CSV and the annotated video; return counts and speed.

    Outputs appear only when the run completes (a camera run also completes on Ctrl-C). `max_frames` 0: all.
    """
    import cv2

    check_margin(margin)
    if video_path is not None and Path(video_path).suffix.lower() not in WRITTEN_SUFFIXES:
        raise UserError(f"{video_path}: the annotated video must be one of {', '.join(WRITTEN_SUFFIXES)}")
    for option, value, least in (("--detect-every", detect_every, 1), ("--smooth", smooth, 1), ("--max-frames", max_frames, 0)):
        if value < least:
            raise UserError(f"{option} must be at least {least}, got {value}")
    model, cfg = load_model(model_path)
    name = f"camera {source}" if isinstance(source, int) else str(source)
    capture = open_source(source)
    try:
        ok, frame = capture.read()
        if not ok:
            raise UserError(f"{name}: no frame could be read (empty or corrupt video)")
        fps = capture.get(cv2.CAP_PROP_FPS)
        if not (math.isfinite(fps) and fps > 0):
            print(f"warning: {name} reports no frame rate; taking {FALLBACK_FPS:g} fps", file=sys.stderr)
            fps = FALLBACK_FPS
        tracker = FaceTracker(FaceDetector(), detect_every, smooth)
        summary = VideoSummary(name)
        with contextlib.ExitStack() as outputs:
            rows = None
            if csv_path is not None:
                with _writable(csv_path):
                    rows = csv.writer(outputs.enter_context(open(outputs.enter_context(atomic.atomic_path(csv_path)), "w", newline="")))
                rows.writerow(CSV_COLUMNS)
            writer = None
            if video_path is not None:
                with _writable(video_path):
                    writer = outputs.enter_context(atomic_video_writer(video_path, fps, (frame.shape[1], frame.shape[0])))
            start = time.perf_counter()
            try:
                while ok and (max_frames == 0 or summary.frames < max_frames):
                    seconds = time.perf_counter() - start if isinstance(source, int) else summary.frames / fps
                    _process_frame(frame, summary, seconds, tracker, model, cfg, margin, tta, rows, writer)
                    ok, frame = capture.read()
            except KeyboardInterrupt:
                if not isinstance(source, int):
                    raise
                summary.stopped = True
            summary.seconds = time.perf_counter() - start
    finally:
        capture.release()
    return summary


def _process_frame(bgr: np.ndarray, summary: VideoSummary, seconds: float, tracker: FaceTracker, model: torch.nn.Module,
                   cfg: TrainConfig, margin: float, tta: str | None, rows: Any, writer: cv2.VideoWriter | None) -> None:
    """Track, classify (one batched call), smooth, and write this frame's CSV rows (to `rows`, a csv writer)
    and annotated image (to `writer`, a cv2.VideoWriter); either may be None."""
    import cv2

    index = summary.frames
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    gray = to_gray(rgb)
    tracks = tracker.update(gray, index)
    labels = []
    if tracks:
        probs, _ = classify_boxes(gray, np.array([t.box for t in tracks]), model, cfg, margin, tta)
        summary.frames_with_face += 1
        for track, p in zip(tracks, probs):
            track.history.append(p)
            smoothed = track.smoothed()
            k = int(smoothed.argmax())
            summary.track_frames[track.id] = summary.track_frames.get(track.id, 0) + 1
            summary.track_expressions.setdefault(track.id, Counter())[EXPRESSIONS[k]] += 1
            labels.append((track.box, f"#{track.id} {EXPRESSIONS[k]} {float(smoothed[k]):.2f}"))
            if rows is not None:
                rows.writerow([index, f"{seconds:.4f}", track.id, *track.box, EXPRESSIONS[k], f"{float(smoothed[k]):.5f}",
                               *(f"{float(v):.5f}" for v in smoothed)])
    if writer is not None:
        writer.write(cv2.cvtColor(np.asarray(draw_labelled_boxes(rgb, labels)), cv2.COLOR_RGB2BGR) if labels else bgr)
    summary.frames += 1


def print_summary(summary: VideoSummary, detect_every: int, smooth: int) -> None:
    """Frames, frames with a face, processing speed, and one row per track."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"tracks in {summary.source}",
                  caption=f"full detection every {detect_every} frames, expressions averaged over {smooth}")
    for column in ("track", "frames", "expression (most frames)"):
        table.add_column(column, justify="right" if column != "expression (most frames)" else "left")
    for track_id, frames in summary.track_frames.items():
        expression, count = summary.track_expressions[track_id].most_common(1)[0]
        table.add_row(str(track_id), str(frames), f"{expression} ({count / frames:.0%})")
    if summary.track_frames:
        console.print(table)
    console.print(f"{summary.frames} frames{' (stopped by Ctrl-C)' if summary.stopped else ''}, "
                  f"{summary.frames_with_face} with a face, {len(summary.track_frames)} track(s), {summary.fps:.1f} frames/s")
