"""Image-folder datasets: `<root>/<split>/<class>/<image>` or `<root>/<class>/<image>`, and (for
synthetic sets made elsewhere) Hugging Face imagefolders labelled by `metadata.csv`.

Covers exports of CK+, RAF-DB, AffectNet, JAFFE and FER2013's own image-folder copy. Any Pillow
format is read, colour is converted to grayscale and other sizes are resized to 48x48. Folder
names are mapped onto the 7 FER2013 expressions (built-in aliases plus `data.class_map`); classes
outside the 7 (e.g. AffectNet's contempt, or any folder mapped to `drop`) are dropped and counted.
Any other folder name stops strict mode (most likely a typo that would silently lose a class) and
is dropped and counted with --lenient.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from rich.progress import Progress

from facedata.sources.fer2013_csv import RawSplits
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "publictest": "val",
    "test": "test", "testing": "test", "privatetest": "test",
}
CLASS_ALIASES = {
    "angry": "angry", "anger": "angry", "mad": "angry",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral", "calm": "neutral",
    "contempt": "drop",  # AffectNet's and CK+'s eighth class: known, outside the 7, so dropped even in strict mode
}


def _load_gray48(path: Path) -> np.ndarray | str:
    """One image as uint8 48x48, or the name of what is wrong with it."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            im.load()  # force a full decode so truncated files fail here
            im = im.convert("L")
            if im.size != (48, 48):
                im = im.resize((48, 48), Image.Resampling.BILINEAR, reducing_gap=3.0)
            return np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        return "not_an_image"
    except (OSError, ValueError, SyntaxError):
        return "corrupt_image"


def _unknown_class(class_dir: Path) -> UserError:
    """One line naming the folder, the closest expression (a typo like `suprise` is the usual cause) and the fixes."""
    name = class_dir.name
    key = name if re.fullmatch(r"[A-Za-z_][\w-]*", name) else f'"{name}"'  # a YAML-safe key to paste
    known = {alias: target for alias, target in CLASS_ALIASES.items() if target != "drop"}
    close = difflib.get_close_matches(name.lower(), list(known), n=1)
    guess = known[close[0]] if close else "<expression>"
    hint = f"did you mean {guess}?" if close else f"expected one of {', '.join(EXPRESSIONS)}"
    return UserError(f"{class_dir}: class folder '{name}' is not an expression ({hint}); rename it, map it with "
                     f"data.class_map: {{{key}: {guess}}}, drop it with data.class_map: {{{key}: drop}}, "
                     "or pass --lenient to drop unknown classes")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_files(root: Path, mapping: dict[str, str], lenient: bool, rejected: Counter,
                  dropped: Counter) -> tuple[list[tuple[str, int, Path]], bool]:
    """(split, label, path) of every image under <root>/<class>/ or <root>/<split>/<class>/, and
    whether the root was split."""
    top = _class_dirs(root)
    if not top:
        raise UserError(f"{root}: contains no class folders; expected <root>/<class>/<image> or <root>/<split>/<class>/<image>")
    presplit = all(d.name.lower() in SPLIT_ALIASES for d in top)
    groups = {SPLIT_ALIASES[d.name.lower()]: d for d in top} if presplit else {"all": root}
    files: list[tuple[str, int, Path]] = []
    for split, folder in groups.items():
        for class_dir in _class_dirs(folder):
            target = mapping.get(class_dir.name.lower())
            if target is None and not lenient:
                raise _unknown_class(class_dir)
            members = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
            if target is None or target == "drop":
                dropped[class_dir.name] += len(members)
                continue
            if not members:
                if not lenient:
                    raise UserError(f"{class_dir}: class folder is empty; add images or remove the folder (or pass --lenient)")
                rejected["empty_class_folder"] += 1
                continue
            files += [(split, EXPRESSIONS.index(target), p) for p in members]
    return files, presplit


def _metadata_files(root: Path, mapping: dict[str, str], lenient: bool, dropped: Counter) -> list[tuple[str, int, Path]]:
    """(split, label, path) from Hugging Face imagefolder `metadata.csv` files (columns file_name and
    label: an expression name or alias, or its FER2013 index 0-6), at the root or in split folders."""
    files: list[tuple[str, int, Path]] = []
    for meta in sorted(root.rglob("metadata.csv")):
        split_name = meta.parent.name.lower() if meta.parent != root else "all"
        with open(meta, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"file_name", "label"} - set(reader.fieldnames or [])
            if missing:
                raise UserError(f"{meta}: needs columns file_name and label (Hugging Face imagefolder); missing {', '.join(sorted(missing))}")
            for row_no, row in enumerate(reader, start=2):
                value = (row["label"] or "").strip()
                target = EXPRESSIONS[int(value)] if value.isdigit() and int(value) < len(EXPRESSIONS) else mapping.get(value.lower())
                if target is None and not lenient:
                    raise UserError(f"{meta}, row {row_no}: label '{value}' is not an expression ({', '.join(EXPRESSIONS)} "
                                    "or their index 0-6); fix it, map it with data.class_map, or pass --lenient")
                if target is None or target == "drop":
                    dropped[value] += 1
                    continue
                files.append((SPLIT_ALIASES.get(split_name, "all"), EXPRESSIONS.index(target), meta.parent / row["file_name"]))
    return files


def _read_images(files: list[tuple[str, int, Path]], lenient: bool, rejected: Counter) -> list[tuple[str, int, Path, np.ndarray]]:
    """Every listed image as uint8 48x48 grayscale, read in threads; bad files stop strict mode."""
    with Progress(transient=True) as progress, ThreadPoolExecutor(max_workers=4) as pool:
        task = progress.add_task(f"reading {len(files)} images", total=len(files))
        results = []
        for r in pool.map(_load_gray48, (p for _, _, p in files)):
            results.append(r)
            progress.advance(task)
    good = []
    for (split, label, path), img in zip(files, results):
        if isinstance(img, str):
            if not lenient:
                what = {"not_an_image": "is not an image Pillow can read", "missing": "is listed but does not exist"}.get(
                    img, "is truncated or corrupt")
                raise UserError(f"{path}: {what}; delete or replace it (or pass --lenient to skip it)")
            rejected[img] += 1
            continue
        good.append((split, label, path, img))
    return good


def read_image_folder(root: str | Path, class_map: dict[str, str] | None = None, lenient: bool = False) -> RawSplits:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: image folder not found; set data.path to a folder laid out as <class>/<image> or <split>/<class>/<image>")
    mapping = {**CLASS_ALIASES, **(class_map or {})}
    rejected, dropped = Counter(), Counter()
    files, presplit = _folder_files(root, mapping, lenient, rejected, dropped)
    if not files:
        raise UserError(f"{root}: no images in folders named like the 7 expressions; map your folder names with data.class_map")
    out: dict[str, tuple[list, list]] = {}
    for split, label, _, img in _read_images(files, lenient, rejected):
        out.setdefault(split, ([], []))
        out[split][0].append(img)
        out[split][1].append(label)
    if not out:
        raise UserError(f"{root}: no readable images left after skipping bad files")
    splits = {
        s: (torch.from_numpy(np.stack(imgs)).unsqueeze(1), torch.tensor(labels, dtype=torch.int64))
        for s, (imgs, labels) in out.items()
    }
    return RawSplits(splits, rejected, dropped, presplit=presplit)


@dataclass
class LabelledFolder:
    """Every face of a labelled folder, whatever its splits: uint8 N x 1 x 48 x 48, labels, and each
    face's file relative to the root (in that order)."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str]
    rejected: Counter
    dropped_classes: Counter


def read_labelled_folder(root: str | Path, class_map: dict[str, str] | None = None, lenient: bool = False,
                         what: str = "image folder") -> LabelledFolder:
    """Faces from a folder made anywhere: a Hugging Face imagefolder with `metadata.csv` (file_name,
    label), or `<class>/<image>` / `<split>/<class>/<image>`; any size or colour, preprocessed exactly as
    `prepare` reads image folders (grayscale, 48x48). Splits are pooled."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: {what} not found; give a folder laid out as <class>/<image> or a Hugging Face "
                        "imagefolder with metadata.csv (file_name, label)")
    mapping = {**CLASS_ALIASES, **(class_map or {})}
    rejected, dropped = Counter(), Counter()
    if any(root.rglob("metadata.csv")):
        files = _metadata_files(root, mapping, lenient, dropped)
    else:
        files, _ = _folder_files(root, mapping, lenient, rejected, dropped)
    good = _read_images(files, lenient, rejected)
    if not good:
        raise UserError(f"{root}: {what} holds no readable faces labelled with one of the 7 expressions; put them in "
                        "<class>/<image> folders or list them in a metadata.csv (file_name, label)")
    return LabelledFolder(torch.from_numpy(np.stack([g[3] for g in good])).unsqueeze(1),
                          torch.tensor([g[1] for g in good], dtype=torch.int64),
                          [g[2].relative_to(root).as_posix() for g in good], rejected, dropped)
