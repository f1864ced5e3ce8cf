"""`fersynth export`: the filtered synthetic set as a dataset others can use, with a datasheet.

Writes <out>/png/<expression>/<i>.png, <out>/synthetic_fer2013.csv (FER2013 layout) and
<out>/DATASHEET.md: what made the images, from which data, which filters and thresholds, the
quality metrics, the memorization check and the intended use. The folder is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from facedata.prepared import load_manifest
from facedata.synthetic import CSV_FILE, export_csv, export_png, load_sources, load_synthetic
from generators.sampling import file_sha256, read_metadata
from quality.cas import cas_accuracy
from runtime import atomic
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS


def _read_json(path: Path, what: str, fix: str) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: {what} not found; {fix}")
    return json.loads(path.read_text())


def _source(prepared: dict) -> str:
    src = prepared.get("source")
    if isinstance(src, dict):
        return ", ".join(f"{k} `{v}`" for k, v in src.items() if k in ("kind", "path", "sha256"))
    return f"source `{src}`"


def _drawn_by(filtered: Path) -> str | None:
    """sha256 of the generator that drew the set, from the generate manifest: the set's own, or that of
    the generated set the filter read (its manifest.json names it as `source`); None if neither is there."""
    candidates = [Path(filtered)]
    filter_manifest = Path(filtered) / "manifest.json"
    if filter_manifest.is_file():
        candidates.append(Path(json.loads(filter_manifest.read_text()).get("source") or filtered))
    for directory in candidates:
        manifest = directory / "manifest.json"
        if manifest.is_file():
            sha = json.loads(manifest.read_text()).get("generator_sha256")
            if sha:
                return sha
    return None


def check_generator(generator: Path, filtered: Path) -> None:
    """The datasheet names the generator file as what regenerates every face, so it must be the one
    that drew them (not, say, a generator retrained since)."""
    drawn_by, sha = _drawn_by(filtered), file_sha256(generator)
    if drawn_by is not None and drawn_by != sha:
        raise UserError(f"{generator}: did not draw the set in {filtered} (sha256 {sha[:16]}..., the set was drawn by "
                        f"{drawn_by[:16]}...); pass that generator, or rerun generate and filter with this one")


def _edit_note(n_edits: int) -> list[str]:
    if not n_edits:
        return []
    return ["", "## Derived from real people's faces",
            f"{n_edits} of these images are SDEdit edits of real training faces (generate.mode: edit): each was made "
            "by noising a real person's face part of the way and denoising it toward another expression, and keeps "
            "much of that person's identity. `manifest.csv` names each edit's source face. They were exported with "
            "--allow-edits; publish them only where the real data's consent and licence allow derived images of "
            "its people."]


def datasheet(quality: dict, generator_meta: dict, generator_path: Path, prepared: dict, n: int, n_edits: int = 0) -> str:
    before, after = quality.get("before", {}), quality.get("after", {})
    cfg = quality.get("config", {})

    def row(key: str) -> str:
        return f"| {key} | {before.get(key, 'n/a')} | {after.get(key, 'n/a')} |"

    counts = " · ".join(f"{e} {quality['kept_per_class'].get(e, 0)}" for e in EXPRESSIONS)
    return "\n".join([
        "# Datasheet: synthetic facial-expression faces (fersynth)",
        "",
        f"{n} grayscale 48x48 faces, each labelled with one of seven expressions ({counts}).",
        "",
        "## How they were made",
        f"- Generator: `{generator_path}` (sha256 `{file_sha256(generator_path)[:16]}...`), kind "
        f"`{generator_meta.get('kind', 'gan')}`, trained {generator_meta.get('steps', '?')} steps.",
        f"- Training data: {_source(prepared)}, "
        f"train counts {prepared.get('counts', {}).get('train')}.",
        "- Each image's label and noise seed are in `manifest.csv` of the filtered set; with the generator file "
        "they regenerate the image exactly.",
        "",
        "## Filters and thresholds",
        f"- Label fidelity: judge p(label) >= {cfg.get('label_tau')}"
        + (f" and <= {cfg['label_tau_max']} (a confidence band)" if cfg.get("label_tau_max", 1) < 1 else "")
        + f" ({'on' if cfg.get('label_fidelity') else 'off'}).",
        *([f"- Selection for coverage: per class, the {cfg.get('coverage_keep')} share of the passing faces that best "
           "covers the real training faces in judge features (greedy k-center)."] if cfg.get("selection") == "coverage" else []),
        f"- Realism score >= {cfg.get('realism_tau')} ({'on' if cfg.get('realism') else 'off'}).",
        f"- Memorization: nearest real training face farther than {quality.get('memorization_threshold')} "
        f"({quality.get('memorization_distance')}; {quality.get('memorization_calibration')})"
        + (f", and in pixels (shift-tolerant RMS of standardised faces) farther than {quality['pixel_copy_threshold']}"
           if quality.get("pixel_copy_threshold") is not None else "") + ".",
        f"- Memorization check on real strangers: {quality.get('memorization_false_rejection_on_real_test')} "
        "(the share of real test faces the filter would have called copies).",
        f"- Near-duplicates and degenerate images removed: {cfg.get('duplicates')}, {cfg.get('degenerate')}.",
        f"- Kept {quality.get('n_kept')} of {quality.get('n_generated')}. Rejected per filter: "
        + ", ".join(f"{k} {v['total']}" for k, v in quality.get("rejected", {}).items()) + ".",
        "",
        "## Quality (judge feature space)",
        "| metric | before filtering | after filtering |",
        "|---|---|---|",
        *(row(k) for k in ("fid", "kid", "precision", "recall", "density", "coverage")),
        f"| GAN-test | {before.get('gan_test', {}).get('overall', 'n/a')} | {after.get('gan_test', {}).get('overall', 'n/a')} |",
        f"| CAS accuracy (train on synthetic only, test on real) | {cas_accuracy(quality, 'before')} | "
        f"{cas_accuracy(quality, 'after')} |",
        "",
        "## Memorization check",
        f"{quality.get('copies_of_training_faces', 0)} generated faces were closer to a real training face than the "
        "threshold and were removed; none of the exported faces is that close to a training face.",
        "",
        *_edit_note(n_edits),
        "",
        "## Intended use",
        "Research on data augmentation for facial-expression recognition. The images inherit the biases and the "
        "licence terms of the real training data; check those before publishing. Not for identifying people or "
        "inferring a real person's emotional state.",
        "",
    ])


def run_export(filtered: Path, quality_json: Path, params: Path, generator: Path, data_dir: Path, out: Path,
               allow_edits: bool = False) -> None:
    data, _ = load_synthetic(filtered)
    sources = load_sources(filtered)
    n_edits = int((sources >= 0).sum()) if sources is not None else 0
    if n_edits and not allow_edits:
        raise UserError(f"{filtered}: {n_edits} of the {len(data)} faces are edits of real people's faces (generate.mode: "
                        "edit) and keep their identity; pass --allow-edits only if the real data's terms allow publishing them")
    quality = _read_json(Path(quality_json), "quality metrics", "run `fersynth filter` (dvc repro filter) first")
    generator = Path(generator)
    meta = read_metadata(generator)
    check_generator(generator, Path(filtered))
    prepared = load_manifest(data_dir)
    with atomic.atomic_dir(out) as tmp:
        export_png(data.images, data.labels, tmp / "png")
        export_csv(data.images, data.labels, tmp / CSV_FILE)
        if (Path(filtered) / "manifest.csv").is_file():
            (tmp / "manifest.csv").write_bytes((Path(filtered) / "manifest.csv").read_bytes())
        (tmp / "DATASHEET.md").write_text(datasheet(quality, meta, generator, prepared, len(data), n_edits))
    print(f"exported {len(data)} faces to {out} (png/, {CSV_FILE}, manifest.csv, DATASHEET.md)")
