"""Inputs that real users hand in: CSVs saved by Excel, misspelt class folders, broken params files."""

from __future__ import annotations

import codecs
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.sources.fer2013_csv import read_fer2013_csv
from tests.conftest import write_fer_csv


def small_fer_rows(per_usage: int = 7, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """FER2013-format rows with random pixels, one label per row cycling 0-6 (no real data needed)."""
    rng = np.random.default_rng(seed)
    return {usage: [(str(i % 7), " ".join(map(str, rng.integers(0, 256, 48 * 48)))) for i in range(per_usage)]
            for usage in ("Training", "PublicTest", "PrivateTest")}


# ---------------------------------------------------------------- FER2013 CSV with a byte-order mark


@pytest.mark.parametrize("gz", [False, True], ids=["csv", "csv.gz"])
def test_fer2013_csv_with_a_utf8_bom_reads_like_one_without(tmp_path, gz):
    plain = write_fer_csv(tmp_path / "plain.csv", small_fer_rows())
    data = codecs.BOM_UTF8 + plain.read_bytes()  # what Excel's "CSV UTF-8" writes
    bom = tmp_path / ("bom.csv.gz" if gz else "bom.csv")
    bom.write_bytes(gzip.compress(data) if gz else data)
    want, got = read_fer2013_csv(plain), read_fer2013_csv(bom)
    assert set(got.splits) == {"train", "val", "test"}
    for split, (images, labels) in want.splits.items():
        assert torch.equal(got.splits[split][0], images) and torch.equal(got.splits[split][1], labels)


def test_a_bom_alone_is_still_an_empty_file(tmp_path):
    from pipelines.errors import UserError

    path = tmp_path / "fer.csv"
    path.write_bytes(codecs.BOM_UTF8)
    with pytest.raises(UserError, match="file is empty"):
        read_fer2013_csv(path)
