"""The `fersynth` command line: one subcommand per pipeline stage, plus user tools.

Stage modules are imported inside each command so that `fersynth --help` stays instant.
User mistakes (`UserError`) print one line and exit with code 2; other exceptions are bugs and
keep their traceback.
"""

from __future__ import annotations

import functools
import sys
from enum import Enum
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
    context_settings={"help_option_names": ["-h", "--help"]},  # commands inherit it from the group
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"fersynth {version('fersynth')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the installed fersynth version and exit.")] = False,
) -> None:
    """fersynth: real faces -> conditional generators -> filtered synthetic faces -> classifiers -> report."""


ParamsOpt = Annotated[Path, typer.Option("--params", help="Parameter file (params.yaml).")]

# The values options accept, checked before any work starts: a typo exits 2 listing them. They repeat
# prepared_data.SPLITS and augment.TTA_MODES because those modules import torch and `--help` must stay
# instant; tests/test_cli.py holds them equal. Enums rather than Literal: every typer that pyproject
# allows (>= 0.12) turns an Enum into a choice, while Literal support came later.
SPLITS = ("train", "val", "test")
TTA_MODES = ("none", "flip", "flip_crops")


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum whose members are `values`; commands pass on `.value`."""
    return Enum(name, {v: v for v in values}, type=str)


Split = choices("Split", SPLITS)
Tta = choices("Tta", TTA_MODES)
SplitOpt = Annotated[Split, typer.Option(help="Prepared split to use.")]
TtaOpt = Annotated[Tta | None, typer.Option(help="Test-time views; default: the model's own setting.", show_default=False)]

# The classifier `dvc repro` trains (dvc.yaml train_real, arm real, seed 0), so evaluate, predict,
# explain and export-model work right after it without --model.
DEFAULT_MODEL = Path("runs/real/s0/model.safetensors")
ModelOpt = Annotated[Path, typer.Option("--model", help="A classifier saved by train-mix, train-classifier or train-judge.")]


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
    from pipelines.evaluate import run_evaluate

    run_evaluate(model, data, split.value, out, [c for c in classes.split(",") if c], tta and tta.value, n_boot)


@app.command("train-gan")
@user_errors
def train_gan(
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data/prepared"),
    judge: Annotated[Path, typer.Option(help="The judge (projected discriminator, guidance, quality readings).")] = Path("models/judge/model.safetensors"),
    no_judge: Annotated[bool, typer.Option("--no-judge", help="Train without the judge (needs d_kind plain, guidance 0).")] = False,
    out: Annotated[Path, typer.Option(help="Generator output folder.")] = Path("models/generator"),
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")] = Path("metrics/generator.json"),
) -> None:
    """Train the class-conditional generator (params `generator`: kind gan or diffusion); resumes if killed."""
    require_torchvision()
    from pipelines.config import load_section
    from pipelines.train_gan import run_train_gan

    cfg = load_section("generator", params)
    run_train_gan(cfg, data, None if no_judge else judge, out, live_dir=Path("dvclive/generator"), metrics_path=metrics)


@app.command()
@user_errors
def generate(
    params: ParamsOpt = Path("params.yaml"),
    generator: Annotated[Path, typer.Option(help="Generator saved by train-gan.")] = Path("models/generator/generator.safetensors"),
    data: Annotated[Path, typer.Option("--data", help="Prepared real data (its train counts drive the 'balance' policy).")] = Path("data/prepared"),
    out: Annotated[Path, typer.Option(help="Output folder for the synthetic set.")] = Path("data/synthetic"),
) -> None:
    """Draw a labelled synthetic dataset (params `generate`); every image records its label and seed."""
    require_torchvision()
    from pipelines.config import load_section
    from pipelines.generate import run_generate
    from pipelines.prepared_data import load_manifest

    cfg = load_section("generate", params)
    manifest = run_generate(cfg, generator, load_manifest(data)["counts"]["train"], out)
    typer.echo(f"generated {manifest['total']} images ({manifest['kind']}) -> {out}")


JudgeOpt = Annotated[Path, typer.Option("--judge", help="The judge trained by train-judge.")]


@app.command("filter")
@user_errors
def filter_(
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data/prepared"),
    synthetic: Annotated[Path, typer.Option(help="Generated set (fersynth generate).")] = Path("data/synthetic"),
    judge: JudgeOpt = Path("models/judge/model.safetensors"),
    out: Annotated[Path, typer.Option(help="Folder for the kept set and manifest.csv.")] = Path("data/filtered"),
    metrics: Annotated[Path, typer.Option(help="quality.json to write.")] = Path("metrics/quality.json"),
    plots: Annotated[Path, typer.Option(help="Folder for the contact sheets.")] = Path("plots/quality"),
) -> None:
    """Score every synthetic face (label fidelity, realism, memorization, duplicates), keep the good ones."""
    require_torchvision()
    from pipelines.config import load_section
    from pipelines.filter import run_filter

    run_filter(load_section("filter", params), data, synthetic, judge, out, metrics, plots)


@app.command()
@user_errors
def quality(
    synthetic: Annotated[Path, typer.Option(help="A synthetic set (data/synthetic or data/filtered).")] = Path("data/filtered"),
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data/prepared"),
    judge: JudgeOpt = Path("models/judge/model.safetensors"),
    out: Annotated[Path | None, typer.Option(help="Also write the metrics to this JSON file.")] = None,
    classifier: Annotated[Path | None, typer.Option(help="Also a GAN-test by this classifier (one the generator never saw).")] = None,
) -> None:
    """Set-level quality of a synthetic set against real train: FID/KID, precision/recall, density/coverage, GAN-test."""
    require_torchvision()
    from pipelines.config import load_section
    from pipelines.quality_report import run_quality

    run_quality(load_section("filter", params), data, synthetic, judge, out, classifier)


@app.command()
@user_errors
def export(
    out: Annotated[Path, typer.Option(help="Folder to write the publishable dataset to.")],
    filtered: Annotated[Path, typer.Option(help="Filtered set (the filter stage's output).")] = Path("data/filtered"),
    quality_json: Annotated[Path, typer.Option("--quality", help="quality.json of that set.")] = Path("metrics/quality.json"),
    params: ParamsOpt = Path("params.yaml"),
    generator: Annotated[Path, typer.Option(help="The generator that made the set.")] = Path("models/generator/generator.safetensors"),
    data: DataOpt = Path("data/prepared"),
) -> None:
    """Write the kept synthetic faces as an image folder and a FER2013-format CSV, with a datasheet."""
    from pipelines.export_dataset import run_export

    run_export(filtered, quality_json, params, generator, data, out)


@app.command("train-mix")
@user_errors
def train_mix(
    arm: Annotated[str, typer.Option(help="real | no_augment | synthetic_only | a synthetic:real ratio such as 0.5.")],
    seed: Annotated[int, typer.Option(help="Training seed (replaces classifier.seed).")] = 0,
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data/prepared"),
    synthetic: Annotated[Path | None, typer.Option(help="Synthetic set; default from ablation.synthetic (data/filtered or data/synthetic).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder; default runs/<arm>/s<seed>.")] = None,
    metrics: Annotated[Path | None, typer.Option(help="Metrics JSON; default metrics/ablation/<arm>_s<seed>.json.")] = None,
) -> None:
    """Train one ablation arm (real, no augmentation, real+synthetic at a ratio, or synthetic only) for one seed."""
    require_torchvision()
    from pipelines.config import load_section
    from pipelines.train_mix import arm_label, parse_arm, run_train_mix

    clf_cfg = load_section("classifier", params)
    abl_cfg = load_section("ablation", params)
    name = arm_label(*parse_arm(arm))
    run_train_mix(arm, seed, clf_cfg, abl_cfg, data, synthetic, out or Path("runs") / name / f"s{seed}",
                  metrics or Path("metrics/ablation") / f"{name}_s{seed}.json")


@app.command()
@user_errors
def report(
    params: ParamsOpt = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="Report folder (index.html, summary.md, figures/).")] = Path("reports"),
) -> None:
    """Statistics over every ablation run (CIs over seeds, paired tests vs real only) and the HTML report."""
    from pipelines.config import load_section
    from pipelines.report import run_report

    run_report(load_section("ablation", params), out_dir=out)


from pipelines import cli_inference  # noqa: E402,F401  (registers predict/explain/export-model)


def main() -> None:
    app(prog_name="fersynth")


if __name__ == "__main__":
    sys.exit(main())
