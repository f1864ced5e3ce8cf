"""Video prediction speed: tracking + one batched classification per frame + smoothing, against the photo path on every frame.

Writes a synthetic video (demo faces moving across smooth colour noise, mp4v), then in the same run times
(a) `run_video` (the full detector every --detect-every frames, the local search between, one batched
predict_proba per frame, smoothing, the per-frame CSV written; the annotated video only with --annotate)
and (b) `predict_faces` (the full FaceDetector: 2 cascades x 5 rotations) on every decoded frame. Both
decode the same file and use an untrained compact_cnn (its cost is small next to detection's). Prints
frames/s of each, the ratio, and how many planted face-frames each found (IoU >= 0.5), with the same
number of threads for PyTorch and OpenCV.

    python benchmarks/bench_video.py [--threads 2] [--quick] [--frames 90] [--annotate]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from classifiers.architectures import build_model
from classifiers.config import TrainConfig
from classifiers.saved_model import save_classifier
from facedata.sources.demo_faces import draw_demo_faces
from tools.planted_faces import iou
from tools.predict import FaceDetector, load_model, predict_faces
from tools.video import run_video

WIDTH, HEIGHT, FPS = 640, 480, 30.0
# (x, y, side, dx, dy per frame): one face crossing the top half to the right, one the bottom half to the left
MOTIONS = ((40, 50, 112, 3, 1), (520, 290, 88, -2, -1))


def write_video(path: Path, frames: int) -> list[list[tuple[int, int, int, int]]]:
    """Demo faces moving over a fixed noisy scene; returns the planted boxes of each frame."""
    faces, _ = draw_demo_faces(1, seed=5)
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.normal(128, 40, (HEIGHT, WIDTH, 3)).clip(0, 255).astype(np.uint8), (0, 0), 3)
    patches = [cv2.resize(face[0].numpy(), (side, side), interpolation=cv2.INTER_CUBIC)
               for face, (_, _, side, _, _) in zip(faces[[3, 0]], MOTIONS)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    planted = []
    for t in range(frames):
        frame, boxes = scene.copy(), []
        for patch, (x, y, side, dx, dy) in zip(patches, MOTIONS):
            x, y = x + dx * t, y + dy * t
            frame[y : y + side, x : x + side] = patch[..., None]
            boxes.append((x, y, side, side))
        writer.write(frame)
        planted.append(boxes)
    writer.release()
    return planted


def found(boxes_per_frame: list[list[tuple[int, int, int, int]]], planted: list[list[tuple[int, int, int, int]]]) -> int:
    """Planted face-frames with a box of IoU >= 0.5 in that frame."""
    return sum(any(iou(b, p) >= 0.5 for b in boxes) for boxes, faces in zip(boxes_per_frame, planted) for p in faces)


def time_video(path: Path, model_path: Path, scratch: Path, frames: int, detect_every: int, smooth: int,
               annotate: bool) -> tuple[float, list[list[tuple[int, int, int, int]]], int]:
    """(seconds, boxes per frame, track ids) of run_video on the file; seconds of its frame loop (the model is loaded)."""
    out = scratch / "video.csv"
    summary = run_video(path, model_path, out, scratch / "annotated.mp4" if annotate else None, detect_every=detect_every,
                        smooth=smooth)
    boxes: list[list[tuple[int, int, int, int]]] = [[] for _ in range(frames)]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        boxes[int(r["frame"])].append(tuple(int(r[k]) for k in "xywh"))
    return summary.seconds, boxes, len({r["track"] for r in rows})


def time_photos(path: Path, model_path: Path) -> tuple[float, list[list[tuple[int, int, int, int]]]]:
    """(seconds, boxes per frame) of predict_faces with the full detector on every decoded frame (the model is loaded)."""
    model, cfg = load_model(model_path)
    detector = FaceDetector()
    t0 = time.perf_counter()
    capture = cv2.VideoCapture(str(path))
    boxes = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        boxes.append([face.box for face in predict_faces(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), model, cfg, detector)])
    capture.release()
    return time.perf_counter() - t0, boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and OpenCV")
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 frames")
    parser.add_argument("--frames", type=int, default=90, help="frames of the synthetic video (30 fps)")
    parser.add_argument("--detect-every", type=int, default=5)
    parser.add_argument("--smooth", type=int, default=5)
    parser.add_argument("--annotate", action="store_true", help="also write the annotated video in the video path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    frames = 30 if args.quick else args.frames

    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        torch.manual_seed(0)
        model_path = scratch / "model.safetensors"
        save_classifier(model_path, build_model("compact_cnn").eval(), TrainConfig(arch="compact_cnn", tta="none"))
        planted = write_video(scratch / "faces.mp4", frames)
        video_s, video_boxes, tracks = time_video(scratch / "faces.mp4", model_path, scratch, frames, args.detect_every,
                                                  args.smooth, args.annotate)
        photo_s, photo_boxes = time_photos(scratch / "faces.mp4", model_path)

    faces = sum(len(p) for p in planted)
    table = Table(title=f"{frames} frames {WIDTH}x{HEIGHT}, {len(MOTIONS)} moving faces, {args.threads} thread(s)",
                  caption=f"video: full detection every {args.detect_every} frames, smoothing over {args.smooth}, "
                          f"CSV{' and annotated video' if args.annotate else ''} written")
    for column in ("path", "seconds", "frames/s", "face-frames found", "track ids"):
        table.add_column(column, justify="left" if column == "path" else "right")
    table.add_row("video (tracking)", f"{video_s:.1f}", f"{frames / video_s:.2f}", f"{found(video_boxes, planted)}/{faces}", str(tracks))
    table.add_row("photos (every frame)", f"{photo_s:.1f}", f"{frames / photo_s:.2f}", f"{found(photo_boxes, planted)}/{faces}", "")
    console = Console()
    console.print(table)
    console.print(f"video / photo: {photo_s / video_s:.2f}x the frames per second")


if __name__ == "__main__":
    main()
