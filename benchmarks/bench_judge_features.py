"""The judge's feature pass, the filter stage's largest cost: float32 vs bf16 autocast (NCHW and
channels_last), one run.

The filter embeds every training face, the calibration test faces and every synthetic face with
the judge (~80,000 faces for 50,000 synthetic against FER2013's 28,709). This times the float32
pass against the bf16-autocast passes the filter can use on CPUs with native bf16, in
alternating repeats (so machine load hits both alike), prints faces/s of each and the ratio, and how
far the bf16 features and probabilities are from float32 ones (cosine, argmax agreement, and
whether each face's nearest training face is the same).

    python benchmarks/bench_judge_features.py --judge models/judge/model.safetensors \
        [--data data/prepared] [--n 4096] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from classifiers.judge import Judge
from facedata.prepared import load_prepared
from quality.neighbours import knn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images = load_prepared(args.data)["train"].images[: args.n]
    judge = Judge.load(args.judge)
    if not judge.fast_inference_available():
        print("this CPU has no native bf16: the filter runs float32 here; nothing to compare")
        return
    nhwc = Judge.load(args.judge).use_channels_last()
    modes = {"float32": (judge, False), "bf16 autocast": (judge, True), "bf16 + channels_last": (nhwc, True)}
    seconds = {m: [] for m in modes}
    out = {}
    for _ in range(args.repeats):
        for name, (model, fast) in modes.items():
            t0 = time.perf_counter()
            out[name] = model.features_and_probabilities(images, fast=fast)
            seconds[name].append(time.perf_counter() - t0)
    rate = {m: len(images) / min(s) for m, s in seconds.items()}
    for m, r in rate.items():
        print(f"{m:>20}: {r:7.0f} faces/s (best of {args.repeats}), {r / rate['float32']:.2f}x float32")
    f_nhwc, f_nchw = out["bf16 + channels_last"][0], out["bf16 autocast"][0]
    print(f"channels_last vs contiguous bf16 features: max |difference| {(f_nhwc - f_nchw).abs().max():.2e}")

    (f32, p32), (f16, p16) = out["float32"], out["bf16 + channels_last"]  # what the filter runs
    cos = torch.nn.functional.cosine_similarity(f32, f16, dim=1)
    half = len(images) // 2  # nearest "training" face among the other half, in both precisions
    nn32 = knn(f32[:half], f32[half:], k=1)[1][:, 0]
    nn16 = knn(f16[:half], f16[half:], k=1)[1][:, 0]
    print(f"features: cosine(bf16, float32) mean {cos.mean():.5f}, min {cos.min():.5f}")
    print(f"probabilities: max |difference| {(p32 - p16).abs().max():.4f}; "
          f"argmax agrees on {(p32.argmax(1) == p16.argmax(1)).double().mean():.4f}")
    print(f"nearest neighbour the same in both precisions: {(nn32 == nn16).double().mean():.4f} of faces")


if __name__ == "__main__":
    main()
