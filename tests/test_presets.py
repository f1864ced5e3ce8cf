"""Every preset runs the whole DAG end to end, the way README tells a user to: `cp presets/X.yaml
params.yaml`, the FER2013 file where the preset expects it, then `dvc exp run -S ...` with tiny sizes
and budgets (and device cpu for the GPU presets). The FER2013-format CSV is written by the test from
the procedural demo faces, so this runs in CI without FER2013. A new preset is covered by adding the file.

The preset's own structure is kept (its real arms, data.real_fraction, the generator kind and the filter's
settings); sizes, budgets, devices, one seed, one control (the preset's first) and one mix (its last) are
overridden through `-S`, which also proves every key the overrides touch exists in
the preset. That DVC expands the preset's full ratio x seed matrix is checked in test_params_files.py.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# gpu-smoke.yaml runs through every stage in tests/test_gpu_smoke.py (the script a GPU user runs first, at
# the same tiny scale); running it here again would add ~80 s to CI for the same code paths
PRESETS = sorted(p.name for p in (REPO / "presets").glob("*.yaml") if p.name != "gpu-smoke.yaml")

TINY_OVERRIDES = [
    # classifiers of the ablation and the judge: a tiny CNN, a few steps, on the CPU
    *[f"{s}.{k}" for s in ("classifier", "judge") for k in
      ("arch=compact_cnn", "width=0.25", "batch_size=16", "tta=none", "val_tta=none", "device=cpu", "threads=2",
       "max_minutes=null")],
    "classifier.steps=6", "classifier.epochs=2", "judge.steps=null", "judge.epochs=1",
    # the GAN: tiny networks, four steps (the preset's kind, judge wiring and losses kept)
    "generator.gan.z_dim=16", "generator.gan.g_channels=[16,16,8,8]", "generator.gan.d_head_channels=8",
    "generator.gan.batch_size=8", "generator.gan.steps=4", "generator.gan.sample_every=2",
    "generator.gan.quality_every=2", "generator.gan.quality_samples=14", "generator.gan.checkpoint_every=2",
    "generator.gan.device=cpu", "generator.gan.threads=2", "generator.gan.max_minutes=null",
    "generator.diffusion.device=cpu",
    "generate.per_class=12", "generate.batch_size=64",
    "filter.inception=false",  # Inception at 299 px costs ~35 s here; tests/test_filter.py covers it
    "ablation.seeds=[0]", "ablation.n_boot=100",
]


def fer2013_csv_from_demo_faces(path: Path) -> Path:
    """A FER2013-layout CSV (emotion,pixels,Usage), gzipped, of procedural faces: 24/6/6 per class."""
    from facedata.sources.demo_faces import draw_demo_faces

    lines = ["emotion,pixels,Usage"]
    for usage, n, seed in (("Training", 24, 1), ("PublicTest", 6, 2), ("PrivateTest", 6, 3)):
        images, labels = draw_demo_faces([n] * 7, seed=seed)
        for image, label in zip(images, labels.tolist()):
            lines.append(f"{label},{' '.join(map(str, image.flatten().tolist()))},{usage}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    # umask 022, a user's usual one: outputs must come out 0644 / 0755 (shareable), checked below
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                          preexec_fn=lambda: os.umask(0o022))


def project_copy(dst: Path) -> None:
    """The working tree's project files (tracked files, with this checkout's uncommitted code)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if "dvc.yaml" not in tracked:
        pytest.skip("needs a git checkout of the project")
    for rel in tracked:
        if (REPO / rel).is_file() and not rel.startswith(("results/", "benchmarks/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_the_whole_dag_at_tiny_scale(preset, tmp_path):
    project_copy(tmp_path)
    shutil.copy2(REPO / "presets" / preset, tmp_path / "params.yaml")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert _run(tmp_path, "git", "init", "-q").returncode == 0
    _run(tmp_path, "git", "add", "-A")
    assert _run(tmp_path, "git", "commit", "-qm", "preset").returncode == 0

    # before the user has put FER2013 where the preset expects it: one line saying where, nothing written
    missing = _run(tmp_path, "fersynth", "prepare")
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr, missing.stderr
    assert params["data"]["path"] in missing.stderr and "put your copy there" in missing.stderr
    assert not (tmp_path / "data" / "prepared").exists()

    fer2013_csv_from_demo_faces(tmp_path / params["data"]["path"])
    abl = params["ablation"]
    mix, control = abl["mixes"][-1], abl["controls"][0]
    overrides = [arg for o in [*TINY_OVERRIDES, f"ablation.mixes=[{mix}]", f"ablation.controls=[{control}]"]
                 for arg in ("-S", o)]
    run = _run(tmp_path, "dvc", "exp", "run", *overrides)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]

    summary = json.loads((tmp_path / "reports" / "summary.json").read_text())
    manifest = json.loads((tmp_path / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["params"]["source"] == "fer2013"
    assert manifest["params"]["real_fraction"] == params["data"]["real_fraction"]
    for arm in abl["real_arms"]:
        assert (tmp_path / "metrics" / "ablation" / f"{arm}_s0.json").is_file(), arm
    arm_metrics = json.loads((tmp_path / "metrics" / "ablation" / "chosen_mix_s0.json").read_text())
    assert arm_metrics["arm"] == mix and 0 <= arm_metrics["test"]["accuracy"] <= 1, arm_metrics
    assert (tmp_path / "metrics" / "screen" / f"{control}.json").is_file()
    assert (tmp_path / "metrics" / "ablation" / "synthetic_only_s0.json").is_file()
    assert (tmp_path / "reports" / "index.html").is_file() and summary
    # the preset's values ran, not the demo's: the filter read the preset's section
    quality = json.loads((tmp_path / "metrics" / "quality.json").read_text())
    assert quality["config"]["label_tau"] == params["filter"]["label_tau"], quality["config"]

    outputs = [p for top in ("data/prepared", "data/synthetic", "data/filtered", "models", "runs", "reports", "metrics")
               for p in [tmp_path / top, *(tmp_path / top).rglob("*")]]
    wrong = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in outputs
             if p.stat().st_mode & 0o777 != (0o755 if p.is_dir() else 0o644)}
    assert not wrong, f"outputs not shareable under umask 022: {wrong}"
