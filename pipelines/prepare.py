"""Stage `prepare`: raw faces -> `data/prepared/{train,val,test}.safetensors` + `manifest.json`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from facedata.config import DataConfig
from facedata.prepared import SPLITS, LabelledImages, encode_split
from facedata.sources.fer2013_csv import RawSplits, read_fer2013_csv
from facedata.sources.image_folder import read_image_folder
from facedata.splits import duplicate_report, nested_subsample, stratified_split
from runtime import atomic
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS


def resolve_data_path(path: str, cwd: Path | None = None) -> Path:
    """`data.path` as given, or, when it is relative and missing, relative to the project a queued
    experiment was copied from.

    `dvc exp run --queue` runs each experiment in a copy of the project under
    `<project>/.dvc/tmp/exps/<tmp>/`, where a relative path such as `../shared/fer2013.csv.gz` points
    nowhere; the user meant it relative to `<project>`, as in a plain `dvc repro`.
    """
    given, here = Path(path), cwd or Path.cwd()
    if given.is_absolute() or (here / given).exists():
        return given
    parts = here.resolve().parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            origin = Path(*parts[:i]) / given
            return origin if origin.exists() else given
    return given


def read_source(cfg: DataConfig) -> RawSplits:
    if cfg.source == "demo":
        from facedata.sources.demo_faces import draw_demo_faces

        images, labels = draw_demo_faces(cfg.demo_per_class, seed=cfg.seed)
        return RawSplits({"all": (images, labels)}, presplit=False)
    path = resolve_data_path(cfg.path)
    if not path.exists():
        what = "FER2013 CSV" if cfg.source == "fer2013" else "image folder"
        raise UserError(f"{path}: {what} not found; put your copy there (mkdir -p {path.parent}, then copy it in) "
                        f"or point data.path at it (dvc exp run -S data.path=/abs/path)")
    if cfg.source == "fer2013":
        return read_fer2013_csv(path, lenient=cfg.lenient)
    return read_image_folder(path, cfg.class_map, lenient=cfg.lenient)


def assign_splits(raw: RawSplits, cfg: DataConfig) -> dict[str, LabelledImages]:
    """Use the source's own splits where it has them; carve the missing ones, stratified and seeded."""
    pools = {name: LabelledImages(*t) for name, t in raw.splits.items()}
    if "all" in pools:
        whole = pools.pop("all")
        idx = stratified_split(whole.labels, {"val": cfg.val_fraction, "test": cfg.test_fraction}, cfg.seed)
        return {name: whole.subset(idx[name]) for name in SPLITS}
    if "train" not in pools:
        raise UserError(f"{cfg.path}: has {', '.join(pools)} folders but no train split; add a train/ folder")
    missing = {name: getattr(cfg, f"{name}_fraction") for name in ("val", "test") if name not in pools}
    if missing:
        idx = stratified_split(pools["train"].labels, missing, cfg.seed)
        train = pools["train"]
        pools = {**pools, **{name: train.subset(idx[name]) for name in missing}, "train": train.subset(idx["train"])}
    return {name: pools[name] for name in SPLITS}


def class_counts(labels: torch.Tensor) -> dict[str, int]:
    counts = torch.bincount(labels, minlength=len(EXPRESSIONS)).tolist()
    return {name: int(c) for name, c in zip(EXPRESSIONS, counts)}


def _source_fingerprint(cfg: DataConfig) -> dict:
    if cfg.source == "demo":
        return {"kind": "demo", "seed": cfg.seed}
    path = resolve_data_path(cfg.path)
    info = {"kind": cfg.source, "path": str(path)}
    if path.is_file():
        info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return info


def prepare(cfg: DataConfig, out_dir: str | Path = "data/prepared", console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    raw = read_source(cfg)
    splits = assign_splits(raw, cfg)
    source_counts = {name: class_counts(d.labels) for name, d in splits.items()}

    dup_report, shared = duplicate_report({name: d.images for name, d in splits.items()})
    removed = 0
    if cfg.dedupe:
        keep = ~torch.from_numpy(shared["train"])
        removed = int((~keep).sum())
        splits["train"] = splits["train"].subset(keep.nonzero().squeeze(1))
    dup_report["removed_from_train"] = removed
    splits["train"] = splits["train"].subset(nested_subsample(splits["train"].labels, cfg.real_fraction, cfg.seed))

    for name, d in splits.items():
        present = class_counts(d.labels)
        if not any(present.values()):
            raise UserError(f"data: split '{name}' is empty; give the source more images or lower the fractions")

    manifest = {
        "source": _source_fingerprint(cfg),
        "params": cfg.to_dict(),
        "classes": list(EXPRESSIONS),
        "counts": {name: class_counts(d.labels) for name, d in splits.items()},
        "totals": {name: len(d) for name, d in splits.items()},
        "source_counts": source_counts,
        "files": {},
        "duplicates": dup_report,
        "rows_rejected": dict(sorted(raw.rejected.items())),
        "classes_dropped": dict(sorted(raw.dropped_classes.items())),
    }
    with atomic.atomic_dir(out_dir) as tmp:
        for name, d in splits.items():
            blob = encode_split(d)
            (tmp / f"{name}.safetensors").write_bytes(blob)
            manifest["files"][f"{name}.safetensors"] = hashlib.sha256(blob).hexdigest()
        atomic.write_json(tmp / "manifest.json", manifest)
    _print_summary(manifest, console)
    return manifest


def _print_summary(manifest: dict, console: Console) -> None:
    table = Table(title=f"prepared {manifest['source']['kind']} data")
    table.add_column("class")
    for split in SPLITS:
        table.add_column(split, justify="right")
    for cls in EXPRESSIONS:
        table.add_row(cls, *(str(manifest["counts"][s][cls]) for s in SPLITS))
    table.add_row("total", *(str(manifest["totals"][s]) for s in SPLITS))
    console.print(table)
    dups = manifest["duplicates"]
    console.print(f"duplicates: {dups['arrays_in_more_than_one_split']} pixel arrays occur in more than one split; "
                  f"{dups['removed_from_train']} removed from train")
    skipped = sum(manifest["rows_rejected"].values())
    if skipped:
        console.print(f"[yellow]skipped {skipped} bad inputs: "
                      + ", ".join(f"{k} {v}" for k, v in manifest["rows_rejected"].items()))
    if manifest["classes_dropped"]:
        console.print("dropped classes outside the 7 expressions: "
                      + ", ".join(f"{k} ({v})" for k, v in manifest["classes_dropped"].items()))
