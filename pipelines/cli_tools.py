"""The `fersynth` user tools, beside the stages: train-classifier, evaluate, quality, export (of the synthetic
set), sample (from a generator), and predict, explain and export-model (using a trained classifier).

Registered on the main app when `pipelines/cli.py` imports this module. As there, the work is imported inside each command
so that `fersynth --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli_common import (
    DEFAULT_MODEL,
    DataOpt,
    JudgeOpt,
    ModelOpt,
    ParamsOpt,
    Split,
    SplitOpt,
    TtaOpt,
    app,
    choices,
    require_torchvision,
    user_errors,
)
from runtime.labels import EXPRESSIONS

Target = choices("Target", ("true", "predicted", *EXPRESSIONS))

MarginOpt = Annotated[float, typer.Option(help="Widen each face box by this fraction of its side on every side "
                                               "before cropping (0: the detector's box, which matches FER2013's framing).")]


@app.command("train-classifier")
@user_errors
def train_classifier(
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data/prepared"),
    out: Annotated[Path, typer.Option(help="Model output folder.")] = Path("models/classifier"),
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")] = Path("metrics/classifier.json"),
    section: Annotated[str, typer.Option(help="params.yaml section with the training config.")] = "classifier",
) -> None:
    """Train an expression classifier on real train, select on val, report on test with 95% CIs."""
    require_torchvision()
    from classifiers.fit import run_train_classifier
    from facedata.prepared import load_prepared
    from pipelines.config import load_section

    cfg = load_section(section, params)
    run_train_classifier(cfg, load_prepared(data), out, metrics, live_dir=Path("dvclive") / out.name,
                         plots_dir=Path("plots") / out.name)


@app.command()
@user_errors
def evaluate(
    model: ModelOpt = DEFAULT_MODEL,
    data: DataOpt = Path("data/prepared"),
    split: SplitOpt = Split.test,
    out: Annotated[Path, typer.Option(help="Folder for metrics.json, confusion.csv and confusion.png.")] = Path("reports/evaluate"),
    classes: Annotated[str, typer.Option(help="Comma-separated expressions to restrict to (cross-dataset); default: those present.")] = "",
    tta: TtaOpt = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
) -> None:
    """Evaluate a saved classifier on any prepared split: metrics with 95% CIs, confusion matrix plot."""
    require_torchvision()
    from tools.evaluate import run_evaluate

    run_evaluate(model, data, split.value, out, [c for c in classes.split(",") if c], tta and tta.value, n_boot)


@app.command()
@user_errors
def quality(
    synthetic: Annotated[Path, typer.Option(help="Synthetic faces: a fersynth set (data/synthetic, data/filtered) or any image folder (<class>/<image>, or an HF imagefolder with metadata.csv).")] = Path("data/filtered"),
    real: Annotated[Path, typer.Option("--real", "--data", help="Real faces: prepared data (its train split) or any image folder.")] = Path("data/prepared"),
    params: ParamsOpt = Path("params.yaml"),
    judge: JudgeOpt = Path("models/judge/model.safetensors"),
    out: Annotated[Path | None, typer.Option(help="Also write the metrics to this JSON file.")] = None,
    classifier: Annotated[Path | None, typer.Option(help="Also a GAN-test by this classifier (one the generator never saw).")] = None,
) -> None:
    """Set-level quality of synthetic faces against real ones (any two folders): FID/KID, precision/recall,
    density/coverage, GAN-test, in the judge's feature space (and Inception's when installed)."""
    require_torchvision()
    from pipelines.config import load_section
    from tools.quality import run_quality

    data_cfg = load_section("data", params)
    run_quality(load_section("filter", params), real, synthetic, judge, out, classifier, data_cfg.class_map, data_cfg.lenient)


@app.command()
@user_errors
def export(
    out: Annotated[Path, typer.Option(help="Folder to write the publishable dataset to.")],
    filtered: Annotated[Path, typer.Option(help="Filtered set (the filter stage's output).")] = Path("data/filtered"),
    quality_json: Annotated[Path, typer.Option("--quality", help="quality.json of that set.")] = Path("metrics/quality.json"),
    params: ParamsOpt = Path("params.yaml"),
    generator: Annotated[Path, typer.Option(help="The generator folder that made the set (unused for a generate.source folder set).")] = Path("models/generator/model"),
    data: DataOpt = Path("data/prepared"),
    allow_edits: Annotated[bool, typer.Option("--allow-edits", help="Publish edits of real people's faces too (generate.mode: edit); the card then says so.")] = False,
    allow_memorization_risk: Annotated[bool, typer.Option("--allow-memorization-risk", help="Publish a set whose memorization check was off or did not pass; the card then says so.")] = False,
    license_id: Annotated[str, typer.Option("--license", help="License id for the card's YAML header; the faces inherit the real data's terms.")] = "other",
) -> None:
    """Write the kept synthetic faces as a Hugging Face imagefolder (train/<expression>/<id>.png, metadata.csv with
    label, seed, generator sha256 and filter scores) with a dataset card README.md, and a FER2013-format CSV."""
    from tools.export_dataset import run_export

    run_export(filtered, quality_json, params, generator, data, out, allow_edits, allow_memorization_risk, license_id)


@app.command()
@user_errors
def sample(
    classes: Annotated[str, typer.Option("--class", help="Expressions, comma-separated (happy,sad), or all: one grid row each.")],
    seeds: Annotated[str, typer.Option(help="Seeds: 0-15, or 0,4,7-9: one grid column each.")],
    out: Annotated[Path, typer.Option(help="The grid PNG to write.")] = Path("grid.png"),
    generator: Annotated[Path, typer.Option(help="A generator folder saved by train-generator (GAN or diffusion).")] = Path("models/generator/model"),
    faces: Annotated[Path | None, typer.Option(help="Also write each face as <folder>/<expression>/seed<seed>.png.")] = None,
    truncation: Annotated[float | None, typer.Option(min=1e-6, help="GAN: resample |z| components above this.")] = None,
    guidance_scale: Annotated[float | None, typer.Option(min=0.0, help="Diffusion: classifier-free guidance (default 2.0, as generate).")] = None,
) -> None:
    """Draw chosen expressions and seeds from a trained generator as a grid; face (class, seed) is the one
    `generate` and an exported set's metadata.csv name."""
    require_torchvision()
    from tools.sample import run_sample

    images = run_sample(generator, classes, seeds, out, faces, truncation, guidance_scale)
    typer.echo(f"{len(images)} faces -> {out}" + (f" and {faces}/" if faces is not None else ""))


@app.command()
@user_errors
def predict(
    paths: Annotated[list[Path] | None, typer.Argument(help="Photos, or folders searched recursively for images; or one video (.mp4 .avi .mov .mkv .webm .m4v).", show_default=False)] = None,
    model: ModelOpt = DEFAULT_MODEL,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write per-face boxes, expressions and probabilities to this JSON file.")] = None,
    annotate: Annotated[Path | None, typer.Option(help="Also write each photo with boxes and labels drawn, as PNG, to this folder.")] = None,
    margin: MarginOpt = 0.0,
    tta: TtaOpt = None,
    camera: Annotated[int | None, typer.Option(help="Run on this camera (0: the first) instead of files; Ctrl-C stops and writes the outputs.", show_default=False)] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Video: write one row per face per frame (box, track id, smoothed probabilities) to this CSV.")] = None,
    annotate_video: Annotated[Path | None, typer.Option(help="Video: write the video with boxes, track ids and expressions drawn to this .mp4 (or .avi, .mov, .mkv).")] = None,
    detect_every: Annotated[int, typer.Option(help="Video: run the full face detector every this many frames; faces are followed by a cheap local search in between.")] = 5,
    smooth: Annotated[int, typer.Option(help="Video: average each face's probabilities over its last this many frames (1: no smoothing).")] = 5,
    max_frames: Annotated[int, typer.Option(help="Video: stop after this many frames (0: all).")] = 0,
) -> None:
    """Find the faces in photos (any size, colour or grayscale) or in a video or camera, and classify their expressions.

    Photos: prints a table (and writes JSON with --json); a photo with no face is listed as such. An unreadable file gets one line on stderr and is skipped, the others still run, and the exit code is then 1.

    Video or --camera: faces are tracked with stable ids and their expressions smoothed; prints a summary, writes --csv and --annotate-video. An unreadable video is an error, and nothing is written.
    """
    require_torchvision()
    from runtime.errors import UserError
    from tools.predict import run_predict
    from tools.video import print_summary, run_video, video_source

    source = video_source(paths or [], camera)
    if source is not None:
        if json_out is not None or annotate is not None:
            raise UserError("--json and --annotate are for photos; for a video or --camera use --csv and --annotate-video")
        summary = run_video(source, model, csv_out, annotate_video, margin, tta and tta.value, detect_every, smooth, max_frames)
        print_summary(summary, detect_every, smooth)
        for what, path in (("per-frame predictions", csv_out), ("annotated video", annotate_video)):
            if path is not None:
                typer.echo(f"{what} -> {path}")
        return
    if csv_out is not None or annotate_video is not None:
        raise UserError("--csv and --annotate-video are for a video or --camera; for photos use --json and --annotate")
    results = run_predict(paths or [], model, json_out, annotate, margin, tta and tta.value)
    if json_out is not None:
        typer.echo(f"predictions -> {json_out}")
    failed = sum(r.error is not None for r in results)
    if failed:
        typer.echo(f"{failed} of {len(results)} file(s) could not be read (see above)", err=True)
        raise typer.Exit(1)


@app.command()
@user_errors
def explain(
    paths: Annotated[list[Path] | None, typer.Argument(help="Photos to explain the faces of; default: faces from --data.", show_default=False)] = None,
    model: ModelOpt = DEFAULT_MODEL,
    data: Annotated[Path, typer.Option("--data", help="Prepared data folder (faces to explain when no photos are given).")] = Path("data/prepared"),
    split: SplitOpt = Split.test,
    target: Annotated[Target, typer.Option(help="Class explained: true (each face's label), predicted, or an expression.")] = Target.true,
    per_class: Annotated[int, typer.Option(help="Faces of each expression taken from --data (one row each).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the choice of faces.")] = 0,
    margin: MarginOpt = 0.0,
    out: Annotated[Path, typer.Option(help="PNG to write: each face above its Grad-CAM overlay.")] = Path("plots/explain/gradcam.png"),
) -> None:
    """Grad-CAM heatmaps: which regions of each face drive the classifier towards an expression."""
    require_torchvision()
    from tools.explain import run_explain

    run_explain(model, out, photos=paths or (), data_dir=data, split=split.value, target=target.value, per_class=per_class,
                seed=seed, margin=margin)


@app.command("export-model")
@user_errors
def export_model(
    model: ModelOpt = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option(help="Folder for model.onnx, model.int8-dynamic.onnx and model.int8-static.onnx.")] = Path("models/onnx"),
    data: Annotated[Path, typer.Option("--data", help="Prepared data: val calibrates the static int8 model, test measures accuracy.")] = Path("data/prepared"),
    metrics: Annotated[Path | None, typer.Option(help="Metrics JSON (parity, sizes, test accuracy of each variant).")] = Path("metrics/export.json"),
    quantize: Annotated[bool, typer.Option(help="Also write the int8 dynamic and static models (needs --data).")] = True,
    calibration_size: Annotated[int, typer.Option(help="Val faces used to calibrate the static int8 model.")] = 512,
    parity_size: Annotated[int, typer.Option(help="Faces on which ONNX Runtime must match PyTorch within 1e-4.")] = 256,
) -> None:
    """Export to ONNX (checked against PyTorch with ONNX Runtime) and quantise to int8 for edge devices."""
    require_torchvision()
    from tools.export_model import run_export_model

    run_export_model(model, out, data, metrics, quantize=quantize, calibration_size=calibration_size,
                     parity_size=parity_size)
