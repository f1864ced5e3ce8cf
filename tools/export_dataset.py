"""`fersynth export`: the filtered synthetic set as a Hugging Face imagefolder others load with one line
(`datasets.load_dataset("imagefolder", data_dir=out)`), with its dataset card.

Writes, atomically as one folder:
  train/<expression>/<id>.png   the kept faces; id = the face's index in the generated set, as in the
                                filter's manifest.csv
  train/metadata.csv            one row per exported face: file_name, label, id, seed, generator_sha256 and
                                every filter score (the imagefolder builder joins it on file_name)
  README.md                     the dataset card: YAML header (license, task, size, the train
                                split) and what made the faces, from which data, the filters and
                                thresholds, metrics before and after, the memorization check and its false-
                                rejection rate, intended use and limitations
  synthetic_fer2013.csv         the same faces in FER2013's CSV layout, in metadata.csv's order
A set holding edits of real faces, or one whose memorization check did not pass (off, or a kept face
as close to a training face as the copies it rejected), is refused unless explicitly allowed, and the
card then says so.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from facedata.prepared import load_manifest
from facedata.synthetic import CSV_FILE, export_csv, load_sources, load_synthetic
from generators.sampling import generator_sha256, read_metadata
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
    """sha256 of the generator that drew the set, from the generate manifest; None if it is not there."""
    return _generated_manifest(filtered).get("generator_sha256")


def check_generator(generator: Path, filtered: Path) -> None:
    """The datasheet names the generator file as what regenerates every face, so it must be the one
    that drew them (not, say, a generator retrained since)."""
    drawn_by, sha = _drawn_by(filtered), generator_sha256(generator)
    if drawn_by is not None and drawn_by != sha:
        raise UserError(f"{generator}: did not draw the set in {filtered} (sha256 {sha[:16]}..., the set was drawn by "
                        f"{drawn_by[:16]}...); pass that generator, or rerun generate and filter with this one")


SCORE_COLUMNS = ("label_prob", "judge_pred", "realism", "nn_real_dist", "nn_pixel_dist", "nn_synthetic_dist",
                 "degenerate", "reason", "source", "source_dist")  # the filter's per-face scores (manifest.csv)


def _generated_manifest(filtered: Path) -> dict:
    """The generate stage's manifest.json of the set the filter read (names the generator or the folder)."""
    filter_manifest = Path(filtered) / "manifest.json"
    source = json.loads(filter_manifest.read_text()).get("source") if filter_manifest.is_file() else None
    for directory in (Path(source) if source else None, Path(filtered)):
        if directory is not None and (directory / "manifest.json").is_file():
            manifest = json.loads((directory / "manifest.json").read_text())
            if "total" in manifest:
                return manifest
    return {}


def kept_rows(filtered: Path, n_kept: int) -> list[dict]:
    """The filter's manifest.csv rows of the kept faces, in the kept set's order (ascending id)."""
    path = Path(filtered) / "manifest.csv"
    if not path.is_file():
        raise UserError(f"{path}: the filter's per-face manifest is missing; rerun `fersynth filter` (dvc repro filter)")
    rows = [r for r in csv.DictReader(open(path, newline="")) if r["kept"] == "True"]
    if len(rows) != n_kept:
        raise UserError(f"{path}: lists {len(rows)} kept faces but {filtered} holds {n_kept}; rerun `fersynth filter`")
    return rows


def memorization_problem(quality: dict, rows: list[dict]) -> str | None:
    """Why the set did not pass the memorization check, or None: the check was off, or a kept face sits as
    close to a training face as the copies it rejects (possible after a refill or with synthetic: raw)."""
    if not quality.get("config", {}).get("memorization", False):
        return "the memorization check was off (filter.memorization: false), so no face was compared with the training faces"
    limits = {"nn_real_dist": quality.get("memorization_threshold"), "nn_pixel_dist": quality.get("pixel_copy_threshold")}

    def copy_like(row: dict) -> bool:  # as the filter decides (distance < threshold), less the CSV's rounding
        return any(limit is not None and row.get(col) not in (None, "") and float(row[col]) < limit - 1e-5
                   for col, limit in limits.items())

    close = [r["id"] for r in rows if copy_like(r)]
    if close:
        return (f"{len(close)} exported faces (ids {', '.join(close[:5])}{'...' if len(close) > 5 else ''}) are as close to "
                "a training face as the copies the filter rejects")
    return None


def _size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return name
    return "1M<n<10M"


def _card_header(n: int, license_id: str) -> str:
    """The card's YAML metadata. No `dataset_info.features`: the imagefolder builder types the columns from
    metadata.csv itself (`label` is the expression's name), and the card must not claim other types."""
    import yaml

    header = {
        "license": license_id,
        "task_categories": ["image-classification"],
        "size_categories": [_size_category(n)],
        "pretty_name": "Synthetic facial-expression faces (fersynth)",
        "tags": ["synthetic", "facial-expression-recognition", "fersynth"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "train/**"}]}],
    }
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n"


def _provenance(generated: dict, generator_meta: dict, generator_path: Path, sha: str | None) -> list[str]:
    if generated.get("source") == "folder":
        return [f"- Made outside fersynth: read from the folder `{generated.get('folder')}` (sha256 of its files "
                f"`{generated.get('folder_sha256', '?')[:16]}...`). Their generator, its training data and seeds are "
                "not known to fersynth: `seed` is -1 and `generator_sha256` holds the folder's sha256.",
                "- Whether these faces derive from real people's faces is not known to fersynth: ask whoever made them."]
    return [f"- Generator: `{generator_path}` (sha256 `{(sha or '?')[:16]}...`), kind `{generator_meta.get('kind', 'gan')}`, "
            f"trained {generator_meta.get('steps', '?')} steps; a diffusion generator is a diffusers folder "
            "(`UNet2DModel.from_pretrained(path, subfolder=\"unet\")`).",
            "- Each row of `train/metadata.csv` gives the face's label and noise seed; with the generator they "
            "regenerate it exactly (`fersynth sample --generator <path> --class <label> --seeds <seed>`)."]


def _edit_note(n_edits: int) -> list[str]:
    if not n_edits:
        return []
    return ["", "## Derived from real people's faces",
            f"{n_edits} of these images are SDEdit edits of real training faces (generate.mode: edit): each was made "
            "by noising a real person's face part of the way and denoising it toward another expression, and keeps "
            "much of that person's identity. The `source` column names each edit's source face. They were exported "
            "with --allow-edits; publish them only where the real data's consent and licence allow derived images of "
            "its people."]


def dataset_card(quality: dict, generated: dict, generator_meta: dict, generator_path: Path, sha: str | None,
                 prepared: dict, n: int, license_id: str, extra_columns: list[str], n_edits: int = 0,
                 memorization: str | None = None) -> str:
    before, after = quality.get("before", {}), quality.get("after", {})
    cfg = quality.get("config", {})

    def row(key: str) -> str:
        return f"| {key} | {before.get(key, 'n/a')} | {after.get(key, 'n/a')} |"

    counts = " · ".join(f"{e} {quality['kept_per_class'].get(e, 0)}" for e in EXPRESSIONS)
    return _card_header(n, license_id) + "\n".join([
        "# Synthetic facial-expression faces (fersynth)",
        "",
        f"{n} grayscale 48x48 faces, each labelled with one of seven expressions ({counts}).",
        "",
        "```python",
        "from datasets import load_dataset",
        'faces = load_dataset("imagefolder", data_dir="<this folder>", split="train")  # image, label, id, seed, scores',
        "```",
        "",
        f"`label` is the expression's name ({', '.join(EXPRESSIONS)}: FER2013's order, if you need its index 0-6).",
        "",
        "## How they were made",
        *_provenance(generated, generator_meta, generator_path, sha),
        f"- Training data (of the generator, and of the judge that scored the faces): {_source(prepared)}, "
        f"train counts {prepared.get('counts', {}).get('train')}.",
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
           if quality.get("pixel_copy_threshold") is not None else "") + f" ({'on' if cfg.get('memorization') else 'off'}).",
        f"- Near-duplicates and degenerate images removed: {cfg.get('duplicates')}, {cfg.get('degenerate')}.",
        f"- Kept {quality.get('n_kept')} of {quality.get('n_generated')}. Rejected per filter: "
        + ", ".join(f"{k} {v['total']}" for k, v in quality.get("rejected", {}).items()) + ".",
        "- Every face's scores are columns of `train/metadata.csv`: label_prob (judge's p(label)), judge_pred, realism, "
        "nn_real_dist (to the nearest real training face), nn_pixel_dist, nn_synthetic_dist, degenerate, reason.",
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
        (f"Not passed: {memorization}. Exported with --allow-memorization-risk: these faces may reproduce real "
         "people's training faces; do not publish them where the real data's terms forbid that." if memorization else
         f"{quality.get('copies_of_training_faces', 0)} generated faces were closer to a real training face than the "
         "threshold and were removed; none of the exported faces is that close to a training face."),
        f"False-rejection rate on real strangers: {quality.get('memorization_false_rejection_on_real_test')} "
        "(the share of real test faces, people the generator never saw, the check would have called copies).",
        *_edit_note(n_edits),
        "",
        "## Intended use and limitations",
        "Research on data augmentation for facial-expression recognition. The faces inherit the biases (who is in "
        "the real data, how its labels were given) and the licence terms of the real training data; check those "
        "before publishing. Labels are the generator's conditioning, checked by a judge with the accuracy given "
        "above, so some are wrong. Not for identifying people or inferring a real person's emotional state.",
        "",
    ])


def run_export(filtered: Path, quality_json: Path, params: Path, generator: Path, data_dir: Path, out: Path,
               allow_edits: bool = False, allow_memorization_risk: bool = False, license_id: str = "other") -> None:
    data, seeds = load_synthetic(filtered)
    sources = load_sources(filtered)
    n_edits = int((sources >= 0).sum()) if sources is not None else 0
    if n_edits and not allow_edits:
        raise UserError(f"{filtered}: {n_edits} of the {len(data)} faces are edits of real people's faces (generate.mode: "
                        "edit) and keep their identity; pass --allow-edits only if the real data's terms allow publishing them")
    quality = _read_json(Path(quality_json), "quality metrics", "run `fersynth filter` (dvc repro filter) first")
    rows = kept_rows(Path(filtered), len(data))
    memorization = memorization_problem(quality, rows)
    if memorization and not allow_memorization_risk:
        raise UserError(f"{filtered}: did not pass the memorization check: {memorization}; rerun the filter with "
                        "filter.memorization: true, or pass --allow-memorization-risk (the card then says so)")
    generated = _generated_manifest(Path(filtered))
    generator = Path(generator)
    if generated.get("source") == "folder":
        meta, sha = {}, generated.get("folder_sha256", "")
    else:
        meta = read_metadata(generator)
        check_generator(generator, Path(filtered))
        sha = generator_sha256(generator)
    prepared = load_manifest(data_dir)
    extra = [c for c in SCORE_COLUMNS if c in rows[0]] if rows else []
    if generated.get("source") == "folder":
        extra.append("source_file")
    names = generated.get("file_names", [])
    width = max(7, len(str(generated.get("total", len(data)))))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=["file_name", "label", "id", "seed", "generator_sha256", *extra], lineterminator="\n")
    writer.writeheader()
    files = []
    for row, label, seed in zip(rows, data.labels.tolist(), seeds.tolist()):
        expression = EXPRESSIONS[label]
        if row["expression"] != expression:
            raise UserError(f"{filtered}/manifest.csv: row id {row['id']} says {row['expression']}, the kept set {expression}; rerun `fersynth filter`")
        file_name = f"{expression}/{int(row['id']):0{width}d}.png"
        files.append(file_name)
        writer.writerow({"file_name": file_name, "label": expression, "id": row["id"], "seed": seed, "generator_sha256": sha,
                         **{c: row.get(c, "") for c in extra if c != "source_file"},
                         **({"source_file": names[int(row["id"])] if int(row["id"]) < len(names) else ""} if "source_file" in extra else {})})
    from PIL import Image

    with atomic.atomic_dir(out) as tmp:
        for expression in EXPRESSIONS:
            (tmp / "train" / expression).mkdir(parents=True, exist_ok=True)
        for image, file_name in zip(data.images[:, 0].numpy(), files):
            Image.fromarray(image).save(tmp / "train" / file_name)
        (tmp / "train" / "metadata.csv").write_text(table.getvalue())
        export_csv(data.images, data.labels, tmp / CSV_FILE)
        (tmp / "README.md").write_text(dataset_card(quality, generated, meta, generator, sha, prepared, len(data), license_id,
                                                    extra, n_edits, memorization))
    print(f"exported {len(data)} faces to {out} (a Hugging Face imagefolder: train/<expression>/<id>.png, "
          f"train/metadata.csv, README.md; and {CSV_FILE})")
