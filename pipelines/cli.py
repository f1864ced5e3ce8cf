"""The `fersynth` command line: one subcommand per DVC stage (`dvc.yaml` runs them), plus the user tools
registered by `pipelines/cli_tools.py`.

Each command imports its stage module inside the function so that `fersynth --help` stays instant.
User mistakes (`UserError`) print one line and exit with code 2; other exceptions are bugs and
keep their traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ablation.names import CONTROLS, REAL_ARMS  # torch-free: --help stays instant
from pipelines.cli_common import DataOpt, JudgeOpt, ParamsOpt, app, choices, require_torchvision, user_errors


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
    from facedata.prepared import load_prepared
    from pipelines.config import load_section
    from pipelines.train_judge import run_train_judge

    cfg = load_section("judge", params)
    run_train_judge(cfg, load_prepared(data), out, metrics, live_dir=Path("dvclive/judge"))


@app.command("train-generator")
@user_errors
def train_generator(
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data/prepared"),
    judge: Annotated[Path, typer.Option(help="The judge (projected discriminator, guidance, quality readings).")] = Path("models/judge/model.safetensors"),
    no_judge: Annotated[bool, typer.Option("--no-judge", help="Train without the judge (needs d_kind plain, guidance 0).")] = False,
    out: Annotated[Path, typer.Option(help="Generator output folder.")] = Path("models/generator"),
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")] = Path("metrics/generator.json"),
) -> None:
    """Train the class-conditional generator (params `generator`: kind gan or diffusion); resumes if killed.
    With generate.source: folder there is nothing to train, and the stage records that."""
    require_torchvision()
    from pipelines.config import load_section
    from pipelines.train_generator import record_no_generator, run_train_generator

    source = load_section("generate", params)
    if source.source == "folder":
        record_no_generator(source.folder, out, metrics)
        return
    cfg = load_section("generator", params)
    run_train_generator(cfg, data, None if no_judge else judge, out, live_dir=Path("dvclive/generator"), metrics_path=metrics)


@app.command()
@user_errors
def generate(
    params: ParamsOpt = Path("params.yaml"),
    generator: Annotated[Path, typer.Option(help="Generator folder saved by train-generator.")] = Path("models/generator/model"),
    data: Annotated[Path, typer.Option("--data", help="Prepared real data (its train counts drive the 'balance' policy).")] = Path("data/prepared"),
    out: Annotated[Path, typer.Option(help="Output folder for the synthetic set.")] = Path("data/synthetic"),
) -> None:
    """Draw a labelled synthetic dataset (params `generate`); every image records its label and seed.
    With generate.source: folder, read the faces from that folder instead (made by any generator)."""
    require_torchvision()
    from facedata.prepared import load_manifest, load_split
    from pipelines.config import load_section
    from pipelines.generate import import_folder, run_generate

    cfg = load_section("generate", params)
    if cfg.source == "folder":
        data_cfg = load_section("data", params)
        manifest = import_folder(cfg.folder, data_cfg.class_map, data_cfg.lenient, load_manifest(data)["counts"]["train"], out, cfg)
        typer.echo(f"read {manifest['total']} faces from {cfg.folder} -> {out}")
        return
    real_train = load_split(data / "train.safetensors") if cfg.mode == "edit" else None
    manifest = run_generate(cfg, generator, load_manifest(data)["counts"]["train"], out, real_train=real_train)
    typer.echo(f"generated {manifest['total']} images ({manifest['kind']}) -> {out}")


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


SeedOpt = Annotated[int, typer.Option(help="Training seed (replaces classifier.seed).")]
SyntheticOpt = Annotated[Path | None, typer.Option(help="Synthetic set; default from ablation.synthetic (data/filtered or data/synthetic).")]
RunOpt = Annotated[Path | None, typer.Option(help="Run folder; default runs/<arm>/s<seed>.")]
RunMetricsOpt = Annotated[Path | None, typer.Option(help="Metrics JSON; default metrics/ablation/<arm>_s<seed>.json.")]
RealArm = choices("RealArm", REAL_ARMS)


def _arm_paths(name: str, seed: int, out: Path | None, metrics: Path | None) -> tuple[Path, Path]:
    return out or Path("runs") / name / f"s{seed}", metrics or Path("metrics/ablation") / f"{name}_s{seed}.json"


@app.command("train-real")
@user_errors
def train_real(
    arm: Annotated[RealArm, typer.Option(help="real (the classifier's augmentation) or no_augment (augmentation off).")],
    seed: SeedOpt = 0,
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data/prepared"),
    out: RunOpt = None,
    metrics: RunMetricsOpt = None,
) -> None:
    """Train a real-data-only ablation arm for one seed (the reference every comparison uses, or no augmentation)."""
    require_torchvision()
    from pipelines.config import load_section
    from pipelines.train_real import run_train_real

    run_train_real(arm.value, seed, load_section("classifier", params), load_section("ablation", params), data,
                   *_arm_paths(arm.value, seed, out, metrics))


ScreenOpt = Annotated[int | None, typer.Option("--seed", help="Training seed; default ablation.screen_seed.", show_default=False)]
Control = choices("Control", CONTROLS)
Role = choices("Role", ("control", "mix"))


@app.command("train-control")
@user_errors
def train_control(
    control: Annotated[Control, typer.Option(help="distill (teacher's soft labels on real faces), mixup or cutmix.")],
    seed: ScreenOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data/prepared"),
    judge: JudgeOpt = Path("models/judge/model.safetensors"),
    out: RunOpt = None,
    metrics: Annotated[Path | None, typer.Option(help="Metrics JSON; default metrics/screen/<control>.json.")] = None,
) -> None:
    """Screen one real-only control (same steps as every arm) on val; the report compares mixes with the best."""
    require_torchvision()
    from pipelines.config import load_section
    from pipelines.train_control import run_train_control

    abl = load_section("ablation", params)
    seed = abl.screen_seed if seed is None else seed
    run_train_control(control.value, seed, load_section("classifier", params), abl, data, judge,
                      out or Path("runs/screen") / control.value, metrics or Path("metrics/screen") / f"{control.value}.json")


@app.command("train-mix")
@user_errors
def train_mix(
    mix: Annotated[str, typer.Option(help="<hard|soft>-<r|s><amount>[-w<weight>], e.g. hard-r0.5 or soft-s0.25.")],
    seed: ScreenOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data/prepared"),
    synthetic: SyntheticOpt = None,
    judge: JudgeOpt = Path("models/judge/model.safetensors"),
    out: RunOpt = None,
    metrics: Annotated[Path | None, typer.Option(help="Metrics JSON; default metrics/screen/<mix>.json.")] = None,
) -> None:
    """Screen real + synthetic faces for one mix (labels, pool ratio or batch share, weight) on val."""
    require_torchvision()
    from pipelines.config import load_section
    from pipelines.train_mix import check_mix, run_train_mix

    check_mix(mix)  # before reading any file
    abl = load_section("ablation", params)
    seed = abl.screen_seed if seed is None else seed
    run_train_mix(mix, seed, load_section("classifier", params), abl, data, synthetic, judge,
                  out or Path("runs/screen") / mix, metrics or Path("metrics/screen") / f"{mix}.json")


@app.command("train-chosen")
@user_errors
def train_chosen(
    role: Annotated[Role, typer.Option(help="control or mix: which of the screen's val choices to train.")],
    seed: SeedOpt = 0,
    params: ParamsOpt = Path("params.yaml"),
    screen: Annotated[Path, typer.Option(help="The screen's metrics folder.")] = Path("metrics/screen"),
    data: DataOpt = Path("data/prepared"),
    synthetic: SyntheticOpt = None,
    judge: JudgeOpt = Path("models/judge/model.safetensors"),
    out: RunOpt = None,
    metrics: RunMetricsOpt = None,
) -> None:
    """Train the control or mix the screen chose on val, on one confirmation seed."""
    require_torchvision()
    from pipelines.config import load_section
    from pipelines.train_chosen import run_train_chosen

    run_train_chosen(role.value, seed, load_section("classifier", params), load_section("ablation", params), screen,
                     data, synthetic, judge, *_arm_paths(f"chosen_{role.value}", seed, out, metrics))


@app.command("train-cas")
@user_errors
def train_cas(
    seed: SeedOpt = 0,
    params: ParamsOpt = Path("params.yaml"),
    data: DataOpt = Path("data/prepared"),
    synthetic: SyntheticOpt = None,
    out: RunOpt = None,
    metrics: RunMetricsOpt = None,
) -> None:
    """Train on synthetic faces only for one seed (CAS: selected on real val, tested on real test)."""
    require_torchvision()
    from pipelines.config import load_section
    from pipelines.train_cas import run_train_cas

    run_train_cas(seed, load_section("classifier", params), load_section("ablation", params), data, synthetic,
                  *_arm_paths("synthetic_only", seed, out, metrics))


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


import pipelines.cli_tools  # noqa: E402,F401  (registers the user tools)


def main() -> None:
    app(prog_name="fersynth")


if __name__ == "__main__":
    sys.exit(main())
