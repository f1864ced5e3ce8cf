"""The whole DVC pipeline on tiny demo data, in one project (each `dvc repro` of it costs minutes of CI): it
runs to the report, a second `dvc repro` reruns nothing, a queued two-value classifier sweep (`dvc exp run
--queue -S`, README's recipe) retrains only the ablation's classifiers (not the judge, GAN or filter) and
`dvc exp show` reads both back, and a folder of faces made elsewhere (generate.source: folder) goes through
the filter and the ablation to the report."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "data": {"source": "demo", "demo_per_class": [30, 15, 30, 30, 30, 30, 30]},
    "judge": {"arch": "compact_cnn", "width": 0.25, "epochs": 1, "batch_size": 32, "tta": "none", "threads": 2},
    "classifier": {"arch": "compact_cnn", "width": 0.25, "epochs": 1, "steps": None, "batch_size": 32, "tta": "none",
                   "threads": 2},
    "generator": {"kind": "gan", "gan": {"z_dim": 16, "g_channels": [16, 16, 8, 8], "d_head_channels": 8, "batch_size": 8,
                                         "steps": 4, "sample_every": 2, "quality_every": 2, "quality_samples": 14,
                                         "checkpoint_every": 2, "threads": 2, "max_minutes": None}},
    "generate": {"per_class": 12},
    "filter": {"inception": False},  # the demo's own thresholds; Inception: test_filter
    # one seed: real, no_augment, the distill control and a soft batch-share mix (both need the teacher), the two
    # chosen arms and CAS
    "ablation": {"real_arms": ["real", "no_augment"], "controls": ["distill"], "mixes": ["soft-s0.25"], "seeds": [0],
                 "n_boot": 200},
}


def _run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _tiny_project(project: Path) -> dict:
    """The project's tracked files with this checkout's code, TINY params, in a fresh git repo; its params."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not tracked or "dvc.yaml" not in tracked:
        pytest.skip("needs a git checkout of the project")
    for rel in tracked:
        if (REPO / rel).is_file():
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, project / rel)
    for rel in ("dvc.yaml", "params.yaml", "pipelines", "classifiers", "generators", "quality", "runtime", "facedata",
                "figures", "tools", "ablation"):  # the working tree under test
        src, dst = REPO / rel, project / rel
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in TINY.items():
        merged = {**params.get(section, {}), **values}
        if section == "generator":
            merged["gan"] = {**params[section].get("gan", {}), **values["gan"]}
        params[section] = merged
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert _run(project, "git", "init", "-q").returncode == 0
    _run(project, "git", "add", "-A")
    _run(project, "git", "commit", "-qm", "init")
    return params


@pytest.mark.slow
def test_repro_is_incremental_sweeps_and_reads_a_folder_of_faces_made_elsewhere(tmp_path):
    _tiny_project(tmp_path)
    first = _run(tmp_path, "dvc", "repro")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage_output in ("metrics/generator.json", "data/filtered/manifest.csv", "metrics/quality.json",
                         "metrics/screen/soft-s0.25.json", "metrics/screen/distill.json",
                         "metrics/ablation/chosen_mix_s0.json", "metrics/ablation/chosen_control_s0.json",
                         "metrics/ablation/synthetic_only_s0.json", "metrics/ablation/no_augment_s0.json",
                         "metrics/ablation.json", "reports/index.html", "reports/summary.md", "reports/summary.json",
                         "reports/figures/gradcam_real.png", "reports/figures/samples.png"):
        assert (tmp_path / stage_output).is_file(), stage_output
    quality = json.loads((tmp_path / "metrics/quality.json").read_text())
    assert quality["config"]["label_tau"] == 0.5 and quality["config"]["realism_tau"] == 0.7
    assert 0 < quality["n_kept"] < quality["n_generated"], quality["rejected"]  # the filter decided something
    summary = json.loads((tmp_path / "metrics/ablation.json").read_text())
    assert "no_augment" in summary and "distill" in summary and summary["best_control_on_val"] in summary
    chosen = json.loads((tmp_path / "metrics/ablation/chosen_mix_s0.json").read_text())
    assert chosen["arm"] == "soft-s0.25" and chosen["merge"]["mode"] == "batch_share" and chosen["seed"] == 0
    assert json.loads((tmp_path / "metrics/screen/soft-s0.25.json").read_text())["seed"] == 100
    page = (tmp_path / "reports/index.html").read_text()
    body = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page.split("<body>")[1])  # base64 can spell "http"
    assert page.count("data:image/png;base64,") >= 5 and "http" not in body  # self-contained
    second = _run(tmp_path, "dvc", "repro")
    assert second.returncode == 0
    assert "Running stage" not in second.stdout, second.stdout

    # a sweep as README shows it: a queued grid runs in copies under .dvc/tmp/exps (as --temp does); what it
    # does not hand to DVC's cache or to git is lost with the copy (the FER2013 study lost its metrics that way)
    _run(tmp_path, "git", "add", "-A")
    _run(tmp_path, "git", "commit", "-qm", "baseline")
    in_git = _run(tmp_path, "git", "ls-files").stdout.split()
    assert "metrics/ablation.json" in in_git and "reports/summary.json" in in_git  # numbers: git may track them
    leaks = [f for f in in_git if f.endswith((".png", ".html", ".safetensors")) or f.startswith(("data/", "models/", "runs/"))]
    assert not leaks, leaks  # faces (sample grids, the report page, data, checkpoints) never reach git
    queued = _run(tmp_path, "dvc", "exp", "run", "--queue", "-S", "classifier.lr=0.03,0.04")
    assert queued.returncode == 0 and queued.stdout.count("Queued experiment") == 2, queued.stdout + queued.stderr[-3000:]
    swept = _run(tmp_path, "dvc", "exp", "run", "--run-all", "-j", "1")
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
    # a classifier-only change retrains only the ablation's classifiers, never the judge, GAN or filter
    logs = swept.stdout.split("Reproducing experiment")[1:]
    assert len(logs) == 2, swept.stdout[-3000:]
    for log in logs:
        ran = _stages_run(log)
        assert {"train_real@real-0", "train_real@no_augment-0", "train_control@distill", "train_mix@soft-s0.25",
                "train_chosen@mix-0", "train_chosen@control-0", "train_cas@0", "report"} <= ran, ran
        assert not ran & {"prepare", "train_judge", "train_generator", "generate", "filter"}, ran
    shown = _run(tmp_path, "dvc", "exp", "show", "--json")
    assert shown.returncode == 0, shown.stderr[-3000:]

    def entries(x):
        if isinstance(x, dict):
            yield x
            x = list(x.values())
        if isinstance(x, list):
            for v in x:
                yield from entries(v)

    runs = {}
    for e in entries(json.loads(shown.stdout)):
        data = e.get("data") if isinstance(e.get("data"), dict) else None
        lr = ((((data or {}).get("params") or {}).get("params.yaml") or {}).get("data") or {}).get("classifier", {}).get("lr")
        if data and lr in (0.03, 0.04) and e.get("name"):
            runs[lr] = (e["name"], data["metrics"]["metrics/ablation.json"]["data"])
    assert set(runs) == {0.03, 0.04}, shown.stdout[-3000:]  # dvc exp show reads both experiments' numbers
    for name, ablation in runs.values():
        assert 0 <= ablation["real"]["accuracy"] <= 1, (name, ablation)
    name, ablation = runs[0.03]
    (tmp_path / "reports/index.html").unlink()
    applied = _run(tmp_path, "dvc", "exp", "apply", name)
    assert applied.returncode == 0, applied.stderr[-3000:]
    applied_metrics = json.loads((tmp_path / "metrics/ablation.json").read_text())
    assert applied_metrics["best_arm_on_val"] == ablation["best_arm_on_val"]  # (exp show leaves out nulls)
    assert all(applied_metrics[arm]["accuracy"] == ablation[arm]["accuracy"] for arm in ("real", "soft-s0.25", "synthetic_only"))
    assert (tmp_path / "reports/index.html").is_file() and (tmp_path / "reports/figures/samples.png").is_file()
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["classifier"]["lr"] == 0.03

    # generate.source: folder (a synthetic set made elsewhere): `dvc repro` trains no generator and samples
    # nothing, the filter and every arm read the folder's faces, and the report names the folder
    their_faces = tmp_path.parent / f"{tmp_path.name}_their_faces"
    write_faces_like_another_tool(their_faces)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["generate"].update(source="folder", folder=str(their_faces))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = _run(tmp_path, "dvc", "repro")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "skipped, the synthetic faces come from" in run.stdout + run.stderr
    assert not _stages_run(run.stdout) & {"prepare", "train_judge"}, run.stdout
    generator = json.loads((tmp_path / "metrics/generator.json").read_text())
    assert generator["kind"] == "none" and generator["folder"] == str(their_faces)
    assert [f.name for f in (tmp_path / "models/generator/model").iterdir()] == ["fersynth.json"]  # no weights to mistake for its source
    made = json.loads((tmp_path / "data/synthetic/manifest.json").read_text())
    assert made["source"] == "folder" and made["total"] == 84 and made["file_names"][0].startswith("anger/face_")
    quality = json.loads((tmp_path / "metrics/quality.json").read_text())
    assert quality["n_generated"] == 84 and 0 < quality["n_kept"] <= 84
    chosen = json.loads((tmp_path / "metrics/ablation/chosen_mix_s0.json").read_text())
    assert chosen["arm"] == "soft-s0.25" and 0 <= chosen["test"]["accuracy"] <= 1
    assert f"read from the folder `{their_faces}`" in (tmp_path / "reports/summary.md").read_text()
    assert _changed_stages(tmp_path) == set()  # up to date: a rerun would run nothing
    next((their_faces / "happiness").iterdir()).unlink()  # the folder is a dependency of generate, not of training
    changed = _changed_stages(tmp_path)
    assert "generate" in changed and "train_generator" not in changed, changed


def _stages_run(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def _changed_stages(project: Path) -> set[str]:
    """The stages `dvc status` finds out of date (a stage whose own deps or params changed)."""
    status = _run(project, "dvc", "status", "--json")
    assert status.returncode == 0, status.stderr[-3000:]
    return {name.split(":")[-1] for name in json.loads(status.stdout or "{}")}


def write_faces_like_another_tool(root: Path, per_class: int = 12) -> None:
    """A synthetic set as a script outside fersynth saves it: 64x64 RGB PNGs in class folders named by aliases."""
    import numpy as np
    from PIL import Image

    from facedata.sources.demo_faces import draw_demo_faces

    faces, labels = draw_demo_faces([per_class] * 7, seed=7)
    names = ["anger", "disgusted", "fearful", "happiness", "sadness", "surprised", "neutral"]
    for i, (face, label) in enumerate(zip(faces[:, 0].numpy(), labels.tolist())):
        (root / names[label]).mkdir(parents=True, exist_ok=True)
        rgb = np.repeat(face[:, :, None], 3, axis=2)
        Image.fromarray(rgb).resize((64, 64), Image.Resampling.BICUBIC).save(root / names[label] / f"face_{i:04d}.png")
