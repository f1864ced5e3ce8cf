"""The filter stage at FER2013 scale: 50,000 synthetic faces against the 28,709 training faces.

Times the whole `run_filter` (judge features, chunked k-NN shortlist, LPIPS on the top-k or the
feature-space fallback, every filter, set metrics before and after, Inception on its configured
sample) at N/4, N/2 and N synthetic faces, and prints how it scales with N. Against it, the
all-pairs approach the issue rules out: LPIPS between every synthetic face and every training face,
N x 28,709 evaluations, timed on a batch of pairs here and multiplied out (it grows exactly
linearly in N; running it would take hours).

The synthetic faces are training faces with noise and a shift (timing does not depend on what they
show). LPIPS weights are usually absent offline, so `--lpips random` times LPIPS with an untrained
backbone (same cost per pair); `--lpips auto` uses what the product would use on this machine
(the feature-space fallback when the weights are absent). The all-pairs estimate always times
LPIPS itself, with the stand-in backbone if need be.

    python benchmarks/bench_filter.py --data data/prepared --judge models/judge/model.safetensors \
        [--n 50000] [--lpips auto|random|off] [--inception-samples 700] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import pipelines.filter as filter_stage
from facedata.prepared import load_prepared
from quality.config import FilterConfig
from quality.perceptual import Lpips


def synthetic_like(train_images: torch.Tensor, train_labels: torch.Tensor, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(train_images), (n,), generator=g)
    x = train_images[pick].float() + 12 * torch.randn(n, 1, 48, 48, generator=g)
    x = torch.roll(x, shifts=(2, -1), dims=(2, 3)).clamp(0, 255).to(torch.uint8)
    return x, train_labels[pick]


def lpips_pairs_per_s(fn: Lpips, images: torch.Tensor, pairs: int = 2048) -> float:
    a, b = images[:pairs], images[pairs:2 * pairs]
    fn(a[:256], b[:256])  # warm-up
    t0 = time.perf_counter()
    fn(a, b)
    return len(a) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset (fersynth prepare)")
    parser.add_argument("--judge", type=Path, required=True, help="a judge checkpoint (fersynth train-judge)")
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--lpips", choices=["auto", "random", "off"], default="random")
    parser.add_argument("--inception-samples", type=int, default=700, help="faces per set; 0 = Inception off")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train = load_prepared(args.data)["train"]
    cfg = FilterConfig(lpips=args.lpips != "off", inception=args.inception_samples > 0,
                       inception_samples=max(14, args.inception_samples))
    if args.lpips == "random":
        stand_in = Lpips("alex", random_backbone=True)
        filter_stage.load_lpips = lambda enabled=True, net="alex": (stand_in, "LPIPS (alex, untrained: timing stand-in)")
    lpips_fn, distance = filter_stage.load_lpips(cfg.lpips)
    print(f"{len(train)} training faces; memorization distance: {distance}; Inception: {cfg.inception_samples if cfg.inception else 'off'}")

    sizes = [args.n // 4, args.n // 2, args.n]
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            images, labels = synthetic_like(train.images, train.labels, n)
            syn = Path(tmp) / f"syn{n}"
            syn.mkdir()
            save_file({"images": images, "labels": labels, "seeds": torch.arange(n)}, str(syn / "synthetic.safetensors"))
            t0 = time.perf_counter()
            q = filter_stage.run_filter(cfg, args.data, syn, args.judge, Path(tmp) / f"out{n}", Path(tmp) / f"q{n}.json",
                                        Path(tmp) / f"plots{n}")
            seconds[n] = time.perf_counter() - t0
            print(f"shortlist filter, N = {n}: {seconds[n]:.1f} s ({q['seconds']})")

    exponent = math.log(seconds[sizes[-1]] / seconds[sizes[0]]) / math.log(sizes[-1] / sizes[0])
    print(f"shortlist filter scales as N^{exponent:.2f} from N = {sizes[0]} to {sizes[-1]}")
    # the approach the shortlist replaces: LPIPS on every pair (an untrained backbone costs the same)
    rate = lpips_pairs_per_s(lpips_fn or Lpips("alex", random_backbone=True), train.images)
    all_pairs = args.n * len(train) / rate
    print(f"LPIPS: {rate:.0f} pairs/s; all-pairs LPIPS for N = {args.n} x {len(train)}: {all_pairs / 3600:.1f} h "
          f"(linear in N)")
    print(f"ratio all-pairs / shortlist at N = {args.n}: {all_pairs / seconds[args.n]:.0f}x")
    verdict = "within" if seconds[args.n] <= 300 else "OVER"
    print(f"bar: N = {args.n} in {seconds[args.n] / 60:.2f} min, {verdict} the 5-minute bar")


if __name__ == "__main__":
    main()
