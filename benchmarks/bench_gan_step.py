"""GAN training step and generation throughput, against the machine's float32 matmul, in one run.

Prints images/s of a training step (the real `train_gan` loop), the FLOPs one step does (counted
with torch's FlopCounterMode as the difference of a 2-step and a 1-step run, so setup and final
readings cancel), the achieved FLOP/s, and that divided by the FLOP/s of a large float32 matmul
measured just before: the efficiency ratio; and the step time with NCHW tensors as the baseline for
channels_last. Then generation throughput (images/s) of `sample`, NCHW against the sampling format.

    python benchmarks/bench_gan_step.py [--d-kind projected|plain] [--batch-size 64] [--steps 20]
        [--threads 2] [--judge models/judge/model.safetensors] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from classifiers.architectures import model_from_config
from classifiers.config import TrainConfig
from classifiers.judge import Judge
from facedata.sources.demo_faces import draw_demo_faces
from generators.config import GanConfig
from generators.gan_networks import build_generator
from generators.gan_sampling import SAMPLING_FORMAT, sample
from generators.gan_training import train_gan


def matmul_flops_per_s(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def step_flops(images, labels, cfg: GanConfig, judge) -> int:
    def counted(steps: int) -> int:
        with FlopCounterMode(display=False) as counter:
            train_gan(images, labels, cfg.model_copy(update={"steps": steps}), judge=judge, progress=False)
        return counter.get_total_flops()

    return counted(2) - counted(1)


def step_seconds(images, labels, cfg: GanConfig, judge, steps: int, warmup: int = 3) -> float:
    stamps: list[float] = []
    train_gan(images, labels, cfg.model_copy(update={"steps": warmup + steps, "log_every": 1}), judge=judge,
              log=lambda row, step: stamps.append(time.perf_counter()) if "loss_d" in row else None, progress=False)
    gaps = [b - a for a, b in zip(stamps[warmup - 1 :], stamps[warmup:])]
    return statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-kind", choices=["projected", "plain"], default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--judge", type=Path, default=None, help="judge checkpoint (default: untrained vgg_fer x0.25)")
    parser.add_argument("--params", type=Path, default=None, help="take generator.gan from this params file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    gan = {}
    if args.params is not None:
        import yaml

        gan = (yaml.safe_load(args.params.read_text()).get("generator") or {}).get("gan") or {}
    over = {k: v for k, v in {"d_kind": args.d_kind, "batch_size": args.batch_size}.items() if v is not None}
    cfg = GanConfig(**{**gan, **over, "threads": args.threads, "device": "cpu", "max_minutes": None,
                       "sample_every": 10**9, "quality_every": 10**9, "checkpoint_every": 10**9, "quality_samples": 7})
    if args.judge is not None:
        judge = Judge.load(args.judge)
    else:
        jcfg = TrainConfig(arch="vgg_fer", width=0.25)
        judge = Judge(model_from_config(jcfg), jcfg)
    images, labels = draw_demo_faces(64, seed=0)

    peak = matmul_flops_per_s()
    flops = step_flops(images, labels, cfg, judge)
    seconds = step_seconds(images, labels, cfg, judge, args.steps)
    achieved = flops / seconds
    print(f"float32 matmul 2048^3: {peak / 1e9:.1f} GFLOP/s ({args.threads} threads)")
    print(f"GAN step ({cfg.d_kind} D, batch {cfg.batch_size}, G {cfg.g_channels}, guidance {cfg.judge_guidance}, "
          f"diffaug '{cfg.diffaug}'): {seconds * 1e3:.0f} ms/step, {cfg.batch_size / seconds:.0f} real images/s, "
          f"{flops / 1e9:.2f} GFLOP/step, {achieved / 1e9:.1f} GFLOP/s")
    print(f"efficiency (achieved / matmul FLOP/s): {achieved / peak:.3f}")
    if cfg.channels_last:  # the same step in NCHW is the baseline
        nchw_seconds = step_seconds(images, labels, cfg.model_copy(update={"channels_last": False}), judge, args.steps)
        print(f"memory format (baseline NCHW {nchw_seconds * 1e3:.0f} ms/step): channels_last is "
              f"{nchw_seconds / seconds:.2f}x {'faster' if seconds < nchw_seconds else 'slower'}")

    n = 1024
    labels_g, seeds = torch.arange(n) % 7, torch.arange(n)
    gen_s = {}
    for name, fmt in (("NCHW", torch.contiguous_format), ("sampling format", SAMPLING_FORMAT)):
        g = build_generator(cfg).eval().to(memory_format=fmt)
        sample(g, labels_g[:64], seeds[:64])
        with FlopCounterMode(display=False) as counter:
            sample(g, labels_g[:256], seeds[:256])
        gen_flops = counter.get_total_flops() / 256
        t0 = time.perf_counter()
        sample(g, labels_g, seeds, batch_size=256)
        gen_s[name] = time.perf_counter() - t0
        print(f"generation, {name}: {n / gen_s[name]:.0f} images/s ({gen_flops / 1e6:.0f} MFLOP/image, "
              f"efficiency {gen_flops * n / gen_s[name] / peak:.3f}; includes per-image seeded noise)")
    print(f"generation in the sampling format ({SAMPLING_FORMAT}) vs NCHW: "
          f"{gen_s['NCHW'] / gen_s['sampling format']:.2f}x")


if __name__ == "__main__":
    main()
