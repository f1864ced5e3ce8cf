"""The `fersynth` command line: one subcommand per pipeline stage, plus user tools.

Stage modules are imported inside each command so that `fersynth --help` stays instant.
User mistakes (`UserError`) print one line and exit with code 2; other exceptions are bugs and
keep their traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Callable

import typer

from pipelines.errors import EXIT_USER_ERROR, UserError

app = typer.Typer(
    name="fersynth",
    help="Does synthetic face data make facial-expression classifiers better? Stages of the DVC pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

@app.callback()
def _root() -> None:
    """fersynth: real faces -> conditional generators -> filtered synthetic faces -> classifiers -> report."""


ParamsOpt = Annotated[Path, typer.Option("--params", help="Parameter file (params.yaml).")]


def user_errors(fn: Callable) -> Callable:
    """Turn a UserError into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; outputs are written atomically, rerun to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


def require_torchvision() -> None:
    """torch and torchvision must come from the same release; say how to fix it if they do not."""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError) as e:
        import torch

        raise UserError(
            f"torchvision cannot be imported with torch {torch.__version__} ({str(e).splitlines()[0]}): "
            "they do not match; fix with `pip install --upgrade --force-reinstall torchvision`, "
            "which installs the torch it was built for"
        ) from None


@app.command()
@user_errors
def prepare(
    params: ParamsOpt = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("data/prepared"),
    lenient: Annotated[bool, typer.Option("--lenient", help="Skip bad rows/files and count them (data.lenient).")] = False,
) -> None:
    """Ingest real faces (FER2013 CSV, image folder or the built-in demo set) into data/prepared/."""
    from pipelines.config import load_section
    from pipelines.prepare import prepare as run

    cfg = load_section("data", params, overrides={"lenient": True} if lenient else None)
    run(cfg, out)


DataOpt = Annotated[Path, typer.Option("--data", help="Prepared data folder.")]


@app.command("train-judge")
@user_errors
def train_judge(
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data/prepared"),
    out: Annotated[Path, typer.Option(help="Judge output folder.")] = Path("models/judge"),
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")] = Path("metrics/judge.json"),
) -> None:
    """Train the judge on real train (params `judge`), calibrate it on val; report on test."""
    require_torchvision()
    from pipelines.config import load_section
    from pipelines.prepared_data import load_prepared
    from pipelines.train_judge import run_train_judge

    cfg = load_section("judge", params)
    run_train_judge(cfg, load_prepared(data), out, metrics, live_dir=Path("dvclive/judge"))


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
    from pipelines.config import load_section
    from pipelines.prepared_data import load_prepared
    from pipelines.train_classifier import run_train_classifier

    cfg = load_section(section, params)
    run_train_classifier(cfg, load_prepared(data), out, metrics, live_dir=Path("dvclive") / out.name,
                         plots_dir=Path("plots") / out.name)


@app.command()
@user_errors
def evaluate(
    model: Annotated[Path, typer.Option(help="A classifier saved by train-classifier or train-judge.")] = Path("models/classifier/model.safetensors"),
    data: DataOpt = Path("data/prepared"),
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    out: Annotated[Path, typer.Option(help="Folder for metrics.json, confusion.csv and confusion.png.")] = Path("reports/evaluate"),
    classes: Annotated[str, typer.Option(help="Comma-separated expressions to restrict to (cross-dataset); default: those present.")] = "",
    tta: Annotated[str, typer.Option(help="none | flip | flip_crops; default: the model's own setting.")] = "",
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
) -> None:
    """Evaluate a saved classifier on any prepared split: metrics with 95% CIs, confusion matrix plot."""
    require_torchvision()
    from pipelines.evaluate import run_evaluate

    run_evaluate(model, data, split, out, [c for c in classes.split(",") if c], tta or None, n_boot)


def main() -> None:
    app(prog_name="fersynth")


if __name__ == "__main__":
    sys.exit(main())
