"""Classifier training step in float32, contiguous (NCHW) vs channels_last, one run, same model and batch.

    python benchmarks/bench_memory_format.py [--arch vgg_fer --width 0.25 --steps 20]

Prints ms per step and images/s of each layout per batch size, and the ratio. On CPUs without native
bf16 (no AVX512-BF16/AMX) this decides the layout of float32 training (classifiers/training.py).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from classifiers.architectures import build_model


def ms_per_step(arch: str, width: float, batch: int, memory_format, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(arch, attention="none", width=width, dropout=0.3, pretrained=False).to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, 48, 48).contiguous(memory_format=memory_format)
    y = torch.randint(0, 7, (batch,))
    for i in range(steps + 3):
        if i == 3:  # after warm-up
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="vgg_fer")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.arch} x{args.width}, float32, {args.threads} threads, torch {torch.__version__}, "
          f"native bf16: {bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}")
    for batch in (64, 32):
        base = ms_per_step(args.arch, args.width, batch, torch.contiguous_format, args.steps)
        cl = ms_per_step(args.arch, args.width, batch, torch.channels_last, args.steps)
        print(f"batch {batch}: NCHW {base:.1f} ms/step ({batch * 1000 / base:.0f} img/s), channels_last {cl:.1f} ms/step "
              f"({batch * 1000 / cl:.0f} img/s): {base / cl:.2f}x")


if __name__ == "__main__":
    main()
