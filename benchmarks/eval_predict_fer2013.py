"""How well `fersynth predict` works on photos: FER2013 test faces planted in larger noisy scenes.

Reports the share of planted faces found (IoU >= 0.5), false alarms, and the classifier's accuracy
on the detected crops next to its accuracy on the same faces' 48x48 originals, in one run.

    python benchmarks/eval_predict_fer2013.py --model runs/real/s0/model.safetensors \
        --data data/prepared [--n 300] [--threads 2] [--out results/predict_fer2013.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from classifiers.saved_model import load_classifier
from classifiers.training import predict_proba
from facedata.prepared import load_split
from tools.planted_faces import match_planted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("runs/real/s0/model.safetensors"))
    ap.add_argument("--data", type=Path, default=Path("data/prepared"))
    ap.add_argument("--n", type=int, default=300, help="test faces to plant (3 per scene)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    test = load_split(args.data / "test.safetensors")
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[: args.n]
    faces, labels = test.images[pick], test.labels[pick]
    model, cfg, _ = load_classifier(args.model)
    t0 = time.perf_counter()
    m = match_planted(faces, seed=args.seed)
    seconds = time.perf_counter() - t0
    found = m["found_index"]
    acc_crops = float((predict_proba(model, m["crops"], cfg).argmax(1) == labels[found]).double().mean()) if len(found) else 0.0
    acc_same_originals = float((predict_proba(model, faces[found], cfg).argmax(1) == labels[found]).double().mean()) if len(found) else 0.0
    acc_all_originals = float((predict_proba(model, faces, cfg).argmax(1) == labels).double().mean())
    result = {
        "command": "python benchmarks/eval_predict_fer2013.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None),
        "faces": m["n"], "scenes": m["scenes"], "detection_rate_iou50": round(m["rate"], 4), "false_alarms": m["false_alarms"],
        "accuracy_on_detected_crops": round(acc_crops, 4), "accuracy_on_same_faces_48px": round(acc_same_originals, 4),
        "accuracy_on_all_planted_faces_48px": round(acc_all_originals, 4), "seconds_per_scene": round(seconds / max(1, m["scenes"]), 3),
        "threads": args.threads,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
