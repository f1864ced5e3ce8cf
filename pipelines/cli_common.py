"""What every `fersynth` command shares: the typer app, the option types, and turning a UserError into
one line and exit code 2. Imported by `pipelines/cli.py` (the stages) and `pipelines/cli_tools.py`
(the user tools), which register their commands on `app`."""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable

import typer

from runtime.errors import EXIT_USER_ERROR, UserError

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


DataOpt = Annotated[Path, typer.Option("--data", help="Prepared data folder.")]


JudgeOpt = Annotated[Path, typer.Option("--judge", help="The judge trained by train-judge.")]
