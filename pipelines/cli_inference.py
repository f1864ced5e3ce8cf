"""`fersynth predict`, `explain` and `export-model`: using a trained classifier.

Registered on the main app by `pipelines/cli.py`. As there, the work is imported inside each command
so that `fersynth --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from classifiers.labels import EXPRESSIONS
from pipelines.cli import (DEFAULT_MODEL, ModelOpt, Split, SplitOpt, TtaOpt, app, choices, require_torchvision,
                           user_errors)

Target = choices("Target", ("true", "predicted", *EXPRESSIONS))

MarginOpt = Annotated[float, typer.Option(help="Widen each face box by this fraction of its side on every side "
                                               "before cropping (0: the detector's box, which matches FER2013's framing).")]


@app.command()
@user_errors
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Photos, or folders searched recursively for images.", show_default=False)],
    model: ModelOpt = DEFAULT_MODEL,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write per-face boxes, expressions and probabilities to this JSON file.")] = None,
    annotate: Annotated[Path | None, typer.Option(help="Also write each photo with boxes and labels drawn, as PNG, to this folder.")] = None,
    margin: MarginOpt = 0.0,
    tta: TtaOpt = None,
) -> None:
    """Find the faces in photos (any size, colour or grayscale) and classify their expressions.

    Prints a table (and writes JSON with --json); a photo with no face is listed as such. An unreadable file gets one line on stderr and is skipped, the others still run, and the exit code is then 1.
    """
    require_torchvision()
    from pipelines.predict import run_predict

    results = run_predict(paths, model, json_out, annotate, margin, tta and tta.value)
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
    from pipelines.explain import run_explain

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
    from pipelines.export_model import run_export_model

    run_export_model(model, out, data, metrics, quantize=quantize, calibration_size=calibration_size,
                     parity_size=parity_size)
