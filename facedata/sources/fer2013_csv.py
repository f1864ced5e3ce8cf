"""FER2013 in its CSV layouts: Kaggle `fer2013.csv` (emotion,pixels,Usage), `icml_face_data.csv`
(emotion, Usage, pixels) and Kaggle's `train.csv` (emotion,pixels) / `test.csv` (pixels only).

The pixel strings are parsed in one vectorised pass over the whole byte buffer (numpy), not one
Python list or image object per row: that is what makes a full FER2013 ingest take seconds. No
library parses this "space-separated integers in a CSV cell" layout with row-level validation at
that speed (pandas + str.split is ~10x slower and not a dependency), hence the hand-written parser.
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from runtime.errors import UserError

N_PIXELS = 48 * 48
USAGE_TO_SPLIT = {b"training": "train", b"publictest": "val", b"privatetest": "test"}
_CHUNK_ROWS = 2048


@dataclass
class RawSplits:
    """What a source yields: images and labels per split (or one unsplit pool), plus rejections."""

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rejected: Counter = field(default_factory=Counter)
    dropped_classes: Counter = field(default_factory=Counter)
    presplit: bool = True


class _BadRows:
    """Strict mode raises on the first bad row; lenient mode counts it and marks it dropped."""

    def __init__(self, path: Path, lenient: bool) -> None:
        self.path, self.lenient, self.counts = path, lenient, Counter()

    def __call__(self, kind: str, line: int, detail: str, fix: str) -> None:
        if not self.lenient:
            raise UserError(f"{self.path}: line {line}: {detail}; {fix} (or pass --lenient to skip bad rows)")
        self.counts[kind] += 1


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise UserError(f"{path}: file not found; set data.path in params.yaml to your FER2013 CSV")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; for image folders set data.source: image_folder")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path}: corrupt or truncated gzip file ({e}); download it again") from None
    # Excel saves "CSV UTF-8" with a byte-order mark, which would otherwise glue onto the first
    # header name ('\ufeffemotion'); this is the bytes-level equivalent of encoding="utf-8-sig".
    raw = raw.removeprefix(codecs.BOM_UTF8)
    if not raw.strip():
        raise UserError(f"{path}: file is empty; expected a FER2013 CSV with header emotion,pixels,Usage")
    return raw


def parse_pixel_rows(rows: list[bytes], line_numbers: np.ndarray, bad: _BadRows) -> tuple[np.ndarray, np.ndarray]:
    """Parse space-separated pixel strings into uint8 N x 2304; returns (pixels, ok_mask).

    `line_numbers[i]` is the file line of `rows[i]`, used in error messages. Works on chunks of
    rows joined into one buffer, with O(characters) uint8 passes and O(tokens) gathers only.
    """
    out = np.zeros((len(rows), N_PIXELS), dtype=np.uint8)
    ok = np.ones(len(rows), dtype=bool)
    for c0 in range(0, len(rows), _CHUNK_ROWS):
        chunk = rows[c0 : c0 + _CHUNK_ROWS]
        n = len(chunk)
        buf = np.frombuffer(b"\n".join(chunk) + b"\n", dtype=np.uint8)
        newlines = np.flatnonzero(buf == 10)  # one per row, in order
        digits = buf - np.uint8(48)  # uint8 arithmetic wraps, so non-digits become >= 10
        is_digit = digits < 10
        chunk_ok = np.ones(n, dtype=bool)

        def reject(rows_at: np.ndarray, kind: str, detail: str, fix: str) -> None:
            for r in np.unique(rows_at):
                if chunk_ok[r]:
                    chunk_ok[r] = False
                    bad(kind, line_numbers[c0 + r], detail, fix)

        other = ~is_digit & (buf != 32) & (buf != 10) & (buf != 13) & (buf != 9)
        if other.any():  # '-', '.', letters ...: rare, so locating their rows may be slow
            reject(np.searchsorted(newlines, np.flatnonzero(other)), "bad_pixel_value",
                   "a pixel value is not an integer 0-255", "pixels must be 2304 space-separated integers")
        edges = np.diff(is_digit.view(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1) - 1
        length = ends - starts + 1
        d = digits.astype(np.int16)
        values = d[ends]
        values += np.where(length >= 2, d[ends - 1] * 10, 0)
        values += np.where(length >= 3, d[ends - 2] * 100, 0)
        out_of_range = (values > 255) | (length > 3)
        if out_of_range.any():
            reject(np.searchsorted(newlines, starts[out_of_range]), "bad_pixel_value",
                   "a pixel value is out of range 0-255", "pixels must be 2304 space-separated integers 0-255")
        counts = np.diff(np.searchsorted(starts, newlines), prepend=0)
        wrong = np.flatnonzero(counts != N_PIXELS)
        for r in wrong:
            reject(np.array([r]), "bad_pixel_count", f"{counts[r]} pixel values instead of {N_PIXELS}",
                   "each row needs a full 48x48 image")
        if chunk_ok.all():
            out[c0 : c0 + n] = values.reshape(n, N_PIXELS)
        else:
            good_tokens = np.repeat(chunk_ok, counts)
            out[c0 : c0 + n][chunk_ok] = values[good_tokens].reshape(-1, N_PIXELS)
        ok[c0 : c0 + n] = chunk_ok
    return out, ok


def read_fer2013_csv(path: str | Path, lenient: bool = False) -> RawSplits:
    path = Path(path)
    lines = _read_bytes(path).split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    header = [h.strip().strip(b'"').strip().lower() for h in lines[0].split(b",")]
    cols = {h: i for i, h in enumerate(header)}
    if b"pixels" not in cols:
        raise UserError(f"{path}: line 1: header {lines[0][:80]!r} has no 'pixels' column; expected emotion,pixels,Usage")
    if b"emotion" not in cols:
        raise UserError(f"{path}: has no 'emotion' column, so it carries no labels (Kaggle's test.csv is like this) "
                        "and cannot serve as a split; use fer2013.csv or Kaggle's train.csv")
    has_usage = b"usage" in cols
    i_emo, i_pix, i_use = cols[b"emotion"], cols[b"pixels"], cols.get(b"usage")
    n_fields = len(header)
    bad = _BadRows(path, lenient)

    body = lines[1:]
    if not body:
        raise UserError(f"{path}: has a header but no rows")
    emotions = np.full(len(body), -1, dtype=np.int64)
    splits = np.zeros(len(body), dtype=np.int8)
    pixel_rows: list[bytes] = []
    row_ok = np.ones(len(body), dtype=bool)
    split_names = ("train", "val", "test")
    # Only cheap field splitting happens per row; pixel parsing is vectorised below.
    for i, line in enumerate(body):
        fields = line.rstrip(b"\r").split(b",")
        if len(fields) != n_fields:
            row_ok[i] = False
            bad("bad_row", i + 2, f"{len(fields)} fields instead of {n_fields}", "each row needs " + ",".join(h.decode() for h in header))
            pixel_rows.append(b"")
            continue
        pixel_rows.append(fields[i_pix].strip().strip(b'"'))
        emo = fields[i_emo].strip().strip(b'"')
        if emo.isdigit() and int(emo) <= 6:
            emotions[i] = int(emo)
        else:
            row_ok[i] = False
            bad("bad_label", i + 2, f"emotion {emo.decode(errors='replace')!r} is not a label 0-6",
                "labels are 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral")
        if has_usage:
            usage = fields[i_use].strip().strip(b'"').lower()
            if usage in USAGE_TO_SPLIT:
                splits[i] = split_names.index(USAGE_TO_SPLIT[usage])
            else:
                row_ok[i] = False
                bad("bad_usage", i + 2, f"Usage {usage.decode(errors='replace')!r} is unknown",
                    "Usage must be Training, PublicTest or PrivateTest")

    # rows already rejected for their label or Usage are not parsed (nor counted twice)
    idx = np.flatnonzero(row_ok)
    pixels = np.zeros((len(body), N_PIXELS), dtype=np.uint8)
    pix_ok = np.zeros(len(body), dtype=bool)
    pixels[idx], pix_ok[idx] = parse_pixel_rows([pixel_rows[j] for j in idx], idx + 2, bad)
    keep = row_ok & pix_ok
    if not keep.any():
        raise UserError(f"{path}: no valid rows left after skipping bad ones; check the file format")
    images = torch.from_numpy(pixels[keep]).reshape(-1, 1, 48, 48)
    labels = torch.from_numpy(emotions[keep])
    which = splits[keep]
    if has_usage:
        out = {s: (images[torch.from_numpy(which == k)], labels[torch.from_numpy(which == k)]) for k, s in enumerate(split_names)}
        missing = [s for s, (_, y) in out.items() if len(y) == 0]
        if missing:
            raise UserError(f"{path}: no rows for split(s) {', '.join(missing)}; "
                            "Usage must include Training, PublicTest and PrivateTest")
        return RawSplits(out, bad.counts, presplit=True)
    return RawSplits({"all": (images, labels)}, bad.counts, presplit=False)
