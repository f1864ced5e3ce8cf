"""FER2013 CSV ingestion: our vectorised parser vs the usual per-row approach, in one run.

The baseline is what torchvision's FER2013 dataset reader does (csv.DictReader, a list of ints per
row, one image per row; that reader itself refuses this rebuilt copy because it checks the
original file's md5), plus a PIL image per row as a typical user pipeline does.

    python benchmarks/bench_ingest_fer2013.py [--path ../shared/data/fer2013/fer2013.csv.gz]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facedata.sources.fer2013_csv import read_fer2013_csv


def baseline(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    usage_to_split = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
    images: dict[str, list] = {"train": [], "val": [], "test": []}
    labels: dict[str, list] = {"train": [], "val": [], "test": []}
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path, newline="") as f:
        for row in csv.DictReader(f):
            pixels = torch.tensor([int(v) for v in row["pixels"].split()], dtype=torch.uint8).reshape(48, 48)
            img = Image.fromarray(pixels.numpy(), mode="L")
            split = usage_to_split[row["Usage"]]
            images[split].append(np.asarray(img))
            labels[split].append(int(row["emotion"]))
    return {s: (torch.from_numpy(np.stack(images[s])).unsqueeze(1), torch.tensor(labels[s])) for s in images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/fer2013/fer2013.csv.gz")
    args = parser.parse_args()
    t0 = time.perf_counter()
    ours = read_fer2013_csv(args.path).splits
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = baseline(args.path)
    t_base = time.perf_counter() - t0
    for split in ("train", "val", "test"):
        assert torch.equal(ours[split][0], base[split][0]) and torch.equal(ours[split][1], base[split][1]), split
    n = sum(len(v[1]) for v in ours.values())
    print(f"rows: {n} (identical tensors from both readers)")
    print(f"ours (vectorised numpy):        {t_ours:7.2f} s  {n / t_ours:9.0f} rows/s")
    print(f"baseline (csv + PIL per row):   {t_base:7.2f} s  {n / t_base:9.0f} rows/s")
    print(f"speed-up: {t_base / t_ours:.1f}x")


if __name__ == "__main__":
    main()
