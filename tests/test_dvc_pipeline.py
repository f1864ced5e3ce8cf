"""The DVC pipeline: a second `dvc repro` reruns nothing; a classifier-only change reruns only the classifier."""

from __future__ import annotations

import os
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
    "classifier": {"arch": "compact_cnn", "width": 0.25, "epochs": 1, "batch_size": 32, "tta": "none", "threads": 2},
}


def _run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_repro_is_incremental(tmp_path):
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not tracked or "dvc.yaml" not in tracked:
        pytest.skip("needs a git checkout of the project")
    for rel in tracked:
        if (REPO / rel).is_file():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, tmp_path / rel)
    for rel in ("dvc.yaml", "params.yaml", "pipelines", "classifiers", "generators"):  # the working tree under test
        src, dst = REPO / rel, tmp_path / rel
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section] = {**params.get(section, {}), **values}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert _run(tmp_path, "git", "init", "-q").returncode == 0
    _run(tmp_path, "git", "add", "-A")
    _run(tmp_path, "git", "commit", "-qm", "init")

    first = _run(tmp_path, "dvc", "repro")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (tmp_path / "metrics/classifier.json").is_file()
    second = _run(tmp_path, "dvc", "repro")
    assert second.returncode == 0
    assert "Running stage" not in second.stdout, second.stdout

    params["classifier"]["lr"] = 0.02
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    third = _run(tmp_path, "dvc", "repro")
    assert third.returncode == 0, third.stderr[-3000:]
    ran = {line.split("'")[1] for line in third.stdout.splitlines() if line.startswith("Running stage")}
    assert "train_classifier" in ran and "prepare" not in ran and "train_judge" not in ran, third.stdout
