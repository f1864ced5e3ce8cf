"""Two filter steps against the plain versions they replaced, in one run, at FER2013 scale.

1. Pixel copies: the shift-tolerant RMS between each synthetic face and its top-k training faces
   (50,000 x 5 pairs for the 50k benchmark). Fast: one grouped convolution ranks the shifts, the RMS
   is recomputed at the best one (`quality.scores.pixel_copy_distance`). Baseline: one pass over the
   batch per shift (`pixel_copy_distance_reference`). Both run in the filter's chunks.
2. Synthetic near-duplicates among N synthetic faces: the chunked pass with a row minimum and sparse
   close pairs (`quality.scores.near_duplicates`) against the top-10 k-NN it replaced.

Faces are drawn procedurally and features are random, so this needs no data; the cost depends only
on the sizes. Prints each time, the ratio, and that both give the same answer.

    python benchmarks/bench_filter_parts.py [--pairs 250000] [--n 50000] [--dim 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from facedata.sources.demo_faces import draw_demo_faces
from quality import scores
from quality.neighbours import knn


def near_duplicates_top10(features: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The replaced version: top-10 k-NN of every face, then the greedy pass over close ones."""
    n = len(features)
    d, idx = knn(features, features, k=min(10, n - 1), exclude_self=True)
    nearest, dup = d[:, 0], torch.zeros(n, dtype=torch.bool)
    for j in torch.nonzero(nearest < threshold).flatten().tolist():
        close = idx[j][d[j] < threshold]
        if bool((~dup[close] & (close < j)).any()):
            dup[j] = True
    return dup, nearest


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def chunked(fn, a, b, chunk=10240):
    return torch.cat([fn(a[i:i + chunk], b[i:i + chunk], 2) for i in range(0, len(a), chunk)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=250_000)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)

    faces = draw_demo_faces([300] * 7, seed=0)[0]
    a = faces[torch.randint(0, len(faces), (args.pairs,), generator=g)]
    b = faces[torch.randint(0, len(faces), (args.pairs,), generator=g)]
    b[::7] = torch.roll(a[::7], shifts=(1, -1), dims=(2, 3))  # some shifted copies
    fast, t_fast = timed(chunked, scores.pixel_copy_distance, a, b)
    ref, t_ref = timed(chunked, scores.pixel_copy_distance_reference, a, b)
    print(f"pixel copies, {args.pairs} pairs, shifts up to 2 px: fast {t_fast:.1f} s, one pass per shift "
          f"{t_ref:.1f} s, ratio {t_ref / t_fast:.2f}x; max |difference| {(fast - ref).abs().max():.1e}")

    centres = torch.randn(args.n // 20, args.dim, generator=g)
    feats = centres[torch.randint(0, len(centres), (args.n,), generator=g)] + 0.3 * torch.randn(args.n, args.dim, generator=g)
    threshold = float(torch.quantile(torch.cdist(feats[:2000], feats[2000:4000]).min(1).values, 0.05))
    (dup, nearest), t_new = timed(scores.near_duplicates, feats, threshold)
    (dup10, nearest10), t_old = timed(near_duplicates_top10, feats, threshold)
    print(f"near-duplicates, N = {args.n}, dim {args.dim}: row-minimum pass {t_new:.1f} s, top-10 k-NN {t_old:.1f} s, "
          f"ratio {t_old / t_new:.2f}x; duplicates {int(dup.sum())} vs {int(dup10.sum())} "
          f"(top-10 can miss neighbours beyond the 10th); nearest distances equal: {torch.allclose(nearest, nearest10)}")


if __name__ == "__main__":
    main()
