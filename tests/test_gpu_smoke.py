"""benchmarks/gpu_smoke.py, the script README tells a user with a GPU to run first, works end to end:
here at tiny scale on the CPU (devices overridden), so its first GPU run cannot die on a script error.
Its study estimate is checked against a hand computation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_presets import TINY_OVERRIDES, fer2013_csv_from_demo_faces

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from gpu_smoke import estimate_study  # noqa: E402


def test_study_estimate_is_runs_times_rate_plus_generator_judge_and_rest():
    study = yaml.safe_load((REPO / "presets/gpu.yaml").read_text())
    smoke = yaml.safe_load((REPO / "presets/gpu-smoke.yaml").read_text())
    measured = {"classifier": {"steps_per_s": 100.0, "overhead_s": 20.0},
                "judge": {"steps": 400, "steps_per_s": 50.0}, "generator": {"steps_per_s": 10.0},
                "stage_seconds": {"generate": 70.0, "prepare": 10.0, "filter": 60.0, "report": 30.0}}
    est = estimate_study(measured, study, smoke)
    abl = study["ablation"]
    runs = (len(abl["real_arms"]) + 1 + 2) * len(abl["seeds"]) + len(abl["controls"]) + len(abl["mixes"])
    assert est["classifier_runs_per_regime"] == runs == 35
    per_run = study["classifier"]["steps"] / 100.0 + 20.0
    gan = min(60 * study["generator"]["gan"]["max_minutes"], study["generator"]["gan"]["steps"] / 10.0)
    rest = (70.0 - 20.0) / (7 * smoke["generate"]["per_class"]) * 7 * study["generate"]["per_class"] + 100.0
    judge_full = 400 / smoke["judge"]["epochs"] * study["judge"]["epochs"] / 50.0
    assert est["hours_per_regime"]["1.0"] == round((runs * per_run + gan + judge_full + rest) / 3600, 2)
    assert est["hours_per_regime"]["0.1"] < est["hours_per_regime"]["1.0"]


@pytest.mark.slow
def test_gpu_smoke_script_runs_at_tiny_scale_on_cpu(tmp_path):
    csv = fer2013_csv_from_demo_faces(tmp_path / "fer.csv.gz")
    out = tmp_path / "gpu_smoke.json"
    overrides = [arg for o in [*TINY_OVERRIDES, "ablation.mixes=[hard-r1]", "ablation.controls=[mixup]",
                                         "ablation.real_arms=[real]"]
                 for arg in ("-S", o)]
    done = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_smoke.py"), "--allow-cpu", "--data", str(csv),
                           "--out", str(out), *overrides], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    stages = result["measured"]["stage_seconds"]
    assert set(stages) == {"prepare", "train_judge", "train_generator", "generate", "filter", "train_real",
                           "train_control", "train_mix", "train_chosen", "train_cas", "report"}
    assert all(v > 0 for v in stages.values())
    assert result["measured"]["classifier"]["runs"] == 6 and result["measured"]["classifier"]["steps_per_s"] > 0
    assert result["measured"]["torchrun"]["ok"] and result["measured"]["torchrun"]["backend"] == "gloo"
    assert result["study_estimate"]["total_hours"] > 0
