"""Classifier training input pipeline: ours vs a torchvision ImageFolder/PIL DataLoader, one run.

Both train the same model with the same augmentations (flip, padded crop, rotation+scale,
brightness/contrast, random erasing) on the same images (exported as PNG for the baseline).
Prints images/s of each, the ratio, and the share of step time spent outside the model.

    python benchmarks/bench_classifier_input.py [--data data/prepared] [--steps 30] [--arch vgg_fer --width 0.375]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2

from classifiers.architectures import build_model
from classifiers.augment import MEAN, STD, AugmentConfig, augment_batch, preprocess
from facedata.prepared import load_split
from facedata.sources.demo_faces import draw_demo_faces
from runtime.labels import EXPRESSIONS


def export_png(images: torch.Tensor, labels: torch.Tensor, root: Path) -> None:
    for name in EXPRESSIONS:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images[:, 0].numpy(), labels.tolist())):
        Image.fromarray(img).save(root / EXPRESSIONS[y] / f"{i:06d}.png")


def timed_steps(model, batches, steps: int) -> tuple[float, float]:
    """(total seconds, seconds inside the model's forward/backward/step) over `steps` steps after 3 warm-up."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    total = inside = 0.0
    it = iter(batches)
    for step in range(steps + 3):
        t0 = time.perf_counter()
        x, y = next(it)
        t1 = time.perf_counter()
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if step >= 3:
            total += t2 - t0
            inside += t2 - t1
    return total, inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="prepared data folder (default: demo faces)")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--arch", default="vgg_fer")
    parser.add_argument("--width", type=float, default=0.375)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the baseline")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.data:
        images, labels = load_split(args.data / "train.safetensors")
    else:
        images, labels = draw_demo_faces(args.n // 7 + 1, seed=0)
    images, labels = images[: args.n], labels[: args.n]
    cfg = AugmentConfig()

    def ours():
        gen = torch.Generator().manual_seed(0)
        x_all = preprocess(images, cfg.equalize)
        while True:
            for idx in torch.randperm(len(labels), generator=gen).split(args.batch):
                if len(idx) == args.batch:
                    yield augment_batch(x_all[idx], cfg, gen), labels[idx]

    baseline_tf = v2.Compose([
        v2.Grayscale(), v2.PILToTensor(), v2.RandomHorizontalFlip(),
        v2.RandomAffine(degrees=cfg.rotation_deg, scale=(1 - cfg.scale, 1 + cfg.scale)),
        v2.RandomCrop(48, padding=cfg.crop_padding, padding_mode="reflect"),
        v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize([MEAN], [STD]),
        v2.RandomErasing(p=cfg.erasing_p, scale=(0.02, 0.2)),
    ])
    with tempfile.TemporaryDirectory() as tmp:
        export_png(images, labels, Path(tmp))
        loader = torch.utils.data.DataLoader(datasets.ImageFolder(tmp, transform=baseline_tf), batch_size=args.batch,
                                             shuffle=True, drop_last=True, num_workers=args.workers,
                                             persistent_workers=args.workers > 0)

        def baseline():
            while True:
                yield from loader

        results = {}
        for name, batches in (("ours (in-memory uint8 + batched tensor augmentation)", ours()),
                              (f"baseline (ImageFolder + PIL/v2 transforms, {args.workers} workers)", baseline())):
            torch.manual_seed(0)
            model = build_model(args.arch, width=args.width)
            total, inside = timed_steps(model, batches, args.steps)
            results[name] = (args.steps * args.batch / total, 1 - inside / total)
    for name, (ips, outside) in results.items():
        print(f"{name:<62} {ips:8.0f} images/s   {100 * outside:5.1f}% of step time outside the model")
    (ours_ips, _), (base_ips, _) = results.values()
    print(f"ratio ours / baseline: {ours_ips / base_ips:.2f}x  ({args.arch} width {args.width}, batch {args.batch}, "
          f"{args.steps} steps, 2 threads)")


if __name__ == "__main__":
    main()
