"""Real-time latency per architecture: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, one run.

For each architecture (untrained weights: latency does not depend on them) the model is exported
with `fersynth export-model`'s code, quantised to static int8 (QDQ, calibrated on demo faces) and
timed at batch 1 and batch 32 on the CPU with the same number of threads. Prints faces/s, ms per
face and the speed-up over eager PyTorch; the int8 dynamic model is left out (onnxruntime runs its
int8 convolutions slower than fp32 on CPU).

    python benchmarks/bench_latency.py [--threads 2] [--quick] [--arch mobilenet_v3_small ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from classifiers.architectures import ARCHITECTURES, build_model
from classifiers.augment import preprocess
from classifiers.config import TrainConfig
from facedata.sources.demo_faces import draw_demo_faces
from tools.export_model import export_onnx, onnx_pixels, quantize_int8, session

WIDTHS = {"compact_cnn": 1.0, "vgg_fer": 0.5, "resnet18": 1.0, "mobilenet_v3_small": 1.0}
BATCHES = (1, 32)


def seconds_per_call(fn: Callable[[], object], budget_s: float, min_calls: int = 5) -> float:
    """Median wall time of one call, after warm-up, over at least `min_calls` calls and `budget_s` seconds."""
    for _ in range(3):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_arch(arch: str, threads: int, budget_s: float, scratch: Path) -> list[dict]:
    torch.manual_seed(0)
    cfg = TrainConfig(arch=arch, width=WIDTHS[arch])
    model = build_model(arch, width=WIDTHS[arch]).eval()
    faces, _ = draw_demo_faces(10, seed=0)  # 70 faces: calibration and inputs
    fp32 = export_onnx(model, cfg, scratch / f"{arch}.onnx")
    int8 = quantize_int8(fp32, scratch, onnx_pixels(faces[:64], cfg))["int8_static"].rename(scratch / f"{arch}.int8.onnx")
    sessions = {"onnxruntime fp32": session(fp32, threads), "onnxruntime int8": session(int8, threads)}
    rows = []
    for batch in BATCHES:
        images = faces[:batch]
        x = preprocess(images, cfg.augment.equalize)
        pixels = onnx_pixels(images, cfg)

        def eager(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                model(x)

        runners = {"pytorch eager": eager}
        for name, sess in sessions.items():
            runners[name] = lambda sess=sess, pixels=pixels: sess.run(["probabilities"], {"pixels": pixels})
        base = None
        for name, fn in runners.items():
            s = seconds_per_call(fn, budget_s)
            base = base or s
            rows.append({"arch": arch, "batch": batch, "runtime": name, "ms_per_face": 1000 * s / batch,
                         "faces_per_s": batch / s, "speedup_vs_eager": base / s})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and ONNX Runtime")
    parser.add_argument("--quick", action="store_true", help="smoke run: short timings")
    parser.add_argument("--arch", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = 0.2 if args.quick else 3.0

    from rich.console import Console
    from rich.table import Table

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for arch in args.arch:
            rows += bench_arch(arch, args.threads, budget, Path(scratch))
    table = Table(title=f"latency per face, {args.threads} CPU thread(s), 48x48 faces{' (quick)' if args.quick else ''}")
    for column in ("arch", "width", "batch", "runtime", "ms/face", "faces/s", "x eager"):
        table.add_column(column, justify="left" if column in ("arch", "runtime") else "right", no_wrap=True)
    for r in rows:
        first = r["runtime"] == "pytorch eager" and r["batch"] == BATCHES[0]
        table.add_row(r["arch"] if first else "", f"{WIDTHS[r['arch']]:g}" if first else "", str(r["batch"]), r["runtime"], f"{r['ms_per_face']:.3f}", f"{r['faces_per_s']:.0f}",
                      f"{r['speedup_vs_eager']:.2f}", end_section=r["runtime"] == "onnxruntime int8" and r["batch"] == BATCHES[-1])
    Console().print(table)


if __name__ == "__main__":
    main()
