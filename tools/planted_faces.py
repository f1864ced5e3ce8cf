"""Photos with faces planted at known boxes: how `predict`'s detector and crops are checked.

Scenes are smooth colour noise with a brightness ramp, three faces each (one per 160-px cell) at
random places and sizes, so every detection can be scored by IoU against the planted box.
"""

from __future__ import annotations

import numpy as np
import torch

from tools.predict import FaceDetector, crop_faces, to_gray

SIZES = (56, 72, 96, 128)
CELL = 160  # each scene is a row of 3 cells, one face in each


def compose_scenes(faces: torch.Tensor, seed: int = 0) -> list[tuple[np.ndarray, list[tuple[int, int, int, int]]]]:
    """RGB scenes (H 300, W 480) of smooth colour noise, 3 faces each at random places and sizes.

    Returns [(scene, planted boxes x, y, w, h)], three faces per scene in order.
    """
    import cv2

    rng = np.random.default_rng(seed)
    scenes = []
    for start in range(0, len(faces) - len(faces) % 3, 3):
        noise = rng.normal(128, 40, (300, 3 * CELL, 3)).clip(0, 255).astype(np.uint8)
        scene = cv2.GaussianBlur(noise, (0, 0), 3)
        scene = (scene * np.linspace(0.7, 1.1, 3 * CELL)[None, :, None]).clip(0, 255).astype(np.uint8)
        boxes = []
        for j, face in enumerate(faces[start : start + 3]):
            s = int(rng.choice(SIZES))
            x = j * CELL + int(rng.integers(0, CELL - s + 1))
            y = int(rng.integers(0, 300 - s + 1))
            patch = cv2.resize(face[0].numpy(), (s, s), interpolation=cv2.INTER_CUBIC)
            scene[y : y + s, x : x + s] = patch[..., None]
            boxes.append((x, y, s, s))
        scenes.append((scene, boxes))
    return scenes


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return inter / (aw * ah + bw * bh - inter)


def match_planted(faces: torch.Tensor, seed: int = 0) -> dict:
    """Detect on composed scenes; per planted face, the best detection (IoU >= 0.5) and its 48x48 crop."""
    detector = FaceDetector()
    found, crops, originals, false_alarms, found_index = 0, [], [], 0, []
    scenes = compose_scenes(faces, seed)
    for s, (scene, planted) in enumerate(scenes):
        boxes = detector.detect(to_gray(scene))
        used = set()
        for j, box in enumerate(planted):
            ious = [iou(b, box) for b in boxes]
            best = int(np.argmax(ious)) if ious else -1
            if best >= 0 and ious[best] >= 0.5:
                found += 1
                used.add(best)
                crops.append(crop_faces(to_gray(scene), boxes[best : best + 1], margin=0.0)[0])
                originals.append(faces[3 * s + j])
                found_index.append(3 * s + j)
        false_alarms += len(boxes) - len(used)
    n = 3 * len(scenes)
    return {"n": n, "rate": found / n, "false_alarms": false_alarms, "scenes": len(scenes),
            "crops": torch.cat(crops) if crops else None, "found_index": torch.tensor(found_index, dtype=torch.int64), "originals": torch.stack(originals) if originals else None}
