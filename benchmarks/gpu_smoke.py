"""GPU smoke run: presets/gpu-smoke.yaml through every stage, each timed, plus a one-GPU torchrun (nccl)
classifier run; from the measured throughputs, the wall time of the full study in presets/gpu.yaml.

    python benchmarks/gpu_smoke.py --data /path/to/fer2013.csv.gz      # ~8 min on one modern GPU

It works in a scratch copy of the project (your params.yaml and outputs are not touched) and writes
results/gpu_smoke.json: the device, every stage's wall seconds, training throughputs (steps/s), and the
estimate. `--allow-cpu -S key=value ...` runs the same script at tiny scale on a CPU (tests do).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
REGIMES = (1.0, 0.25, 0.1)  # the study's data.real_fraction queue (presets/gpu.yaml header)


def set_dotted(params: dict, dotted: str, value: str) -> None:
    node = params
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    if leaf not in node:
        raise SystemExit(f"-S {dotted}: no such key in presets/gpu-smoke.yaml")
    node[leaf] = yaml.safe_load(value)


def scratch_project(workdir: Path, data: Path, overrides: list[str]) -> dict:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        if (REPO / rel).is_file():
            (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, workdir / rel)
    params = yaml.safe_load((REPO / "presets" / "gpu-smoke.yaml").read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        set_dotted(params, key, value)
    target = workdir / params["data"]["path"]
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(data.resolve(), target)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def run(cwd: Path, *cmd: str) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "fersynth", "GIT_AUTHOR_EMAIL": "smoke@localhost",
           "GIT_COMMITTER_NAME": "fersynth", "GIT_COMMITTER_EMAIL": "smoke@localhost"}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done


def rate(metrics: Path) -> dict:
    """steps, training seconds and steps/s from a training stage's metrics JSON."""
    m = json.loads(metrics.read_text())
    seconds = max(60 * m["train_minutes"], 0.6)  # metrics hold minutes to 2 decimals: 0.6 s is the resolution
    return {"steps": m["steps"], "train_seconds": round(seconds, 1), "steps_per_s": round(m["steps"] / max(seconds, 1e-9), 2)}


def estimate_study(measured: dict, study: dict, smoke: dict) -> dict:
    """Hours for presets/gpu.yaml's three regimes, from this run's throughputs (same GPU, same widths)."""
    clf, judge, gan = measured["classifier"], measured["judge"], measured["generator"]
    abl = study["ablation"]
    # real arms, CAS and the two chosen arms on every seed, plus the screen's controls and mixes once
    runs = (len(abl["real_arms"]) + 1 + 2) * len(abl["seeds"]) + len(abl["controls"]) + len(abl["mixes"])
    per_run = study["classifier"]["steps"] / clf["steps_per_s"] + clf["overhead_s"]
    gan_s = min(60 * study["generator"]["gan"]["max_minutes"], study["generator"]["gan"]["steps"] / gan["steps_per_s"])
    # a stage's wall time is start-up (as a classifier run's, outside its training) plus the work
    per_face = max(measured["stage_seconds"]["generate"] - clf["overhead_s"], 0) / (7 * smoke["generate"]["per_class"])
    rest = per_face * 7 * study["generate"]["per_class"] + sum(
        measured["stage_seconds"][s] for s in ("prepare", "filter", "report"))
    judge_steps_full = judge["steps"] / smoke["judge"]["epochs"] * study["judge"]["epochs"]
    hours = {}
    for fraction in REGIMES:
        judge_s = judge_steps_full * fraction / judge["steps_per_s"]
        hours[str(fraction)] = round((runs * per_run + gan_s + judge_s + rest) / 3600, 2)
    return {"classifier_runs_per_regime": runs, "seconds_per_classifier_run": round(per_run),
            "gan_seconds": round(gan_s), "hours_per_regime": hours, "total_hours": round(sum(hours.values()), 1),
            "assumes": "the same GPU as the smoke run; prepare, filter and report as long as in the smoke run"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO / "data/raw/fer2013.csv.gz", help="your FER2013 CSV(.gz)")
    ap.add_argument("--out", type=Path, default=REPO / "results/gpu_smoke.json")
    ap.add_argument("--allow-cpu", action="store_true", help="run without CUDA (tests, with -S device=cpu overrides)")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="key=value on top of gpu-smoke.yaml")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("no CUDA device: this is the GPU smoke run (pass --allow-cpu with -S ...device=cpu to test it)")
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: FER2013 CSV not found; pass --data /path/to/fer2013.csv.gz")
    with tempfile.TemporaryDirectory(prefix="fersynth-gpu-smoke-") as tmp:
        work = Path(tmp)
        params = scratch_project(work, args.data, args.overrides)
        # the copy holds .dvc/ already; DVC and dvclive want a git repository with a commit beside it
        for cmd in (("git", "init", "-q"), ("git", "add", "-A"), ("git", "commit", "-qm", "gpu smoke")):
            assert run(work, *cmd)[1].returncode == 0, cmd
        names = run(work, "dvc", "stage", "list", "--name-only")[1].stdout.split()
        stage_seconds: dict[str, float] = {}
        for name in names:  # dvc.yaml lists them in dependency order
            seconds, done = run(work, "dvc", "repro", "--single-item", name)
            if done.returncode != 0:
                raise SystemExit(f"stage {name} failed after {seconds:.0f} s:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            group = name.split("@")[0]
            stage_seconds[group] = stage_seconds.get(group, 0.0) + seconds
            print(f"{name}: {seconds:.1f} s", flush=True)
        clf_runs = sorted((work / "metrics" / "ablation").glob("*_s*.json")) + sorted((work / "metrics" / "screen").glob("*.json"))
        clf = [rate(p) for p in clf_runs]
        n_clf = len(clf)
        clf_train = sum(c["train_seconds"] for c in clf)
        classifier = {"steps_per_s": round(sum(c["steps"] for c in clf) / max(clf_train, 1e-9), 2),
                      "overhead_s": round((sum(stage_seconds[g] for g in ("train_real", "train_control", "train_mix", "train_chosen", "train_cas"))
                                           - clf_train) / n_clf, 1), "runs": n_clf}
        gen = json.loads((work / "metrics" / "generator.json").read_text())
        measured = {"stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
                    "judge": rate(work / "metrics" / "judge.json"), "classifier": classifier,
                    "generator": {"steps": gen["steps"], "steps_per_s": gen.get("steps_per_s")}}
        # data-parallel: nccl needs one GPU per rank, so it is exercised only with two or more GPUs;
        # on CPU two gloo ranks run the same code path
        backend = "nccl" if params["classifier"]["device"] == "cuda" else "gloo"
        ranks = torch.cuda.device_count() if backend == "nccl" else 2
        seconds, done = run(work, sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                            shutil.which("fersynth", path=str(Path(sys.executable).parent)) or "fersynth",
                            "train-classifier", "--out", "runs/torchrun", "--metrics", "metrics/torchrun.json")
        measured["torchrun"] = {"backend": backend if ranks > 1 else "none (one GPU: a single rank)", "ranks": ranks,
                                "seconds": round(seconds, 1), "ok": done.returncode == 0,
                                "tail": (done.stdout + done.stderr)[-600:] if done.returncode else ""}
    study = yaml.safe_load((REPO / "presets" / "gpu.yaml").read_text())
    result = {
        "command": " ".join(["python", "benchmarks/gpu_smoke.py", *sys.argv[1:]]),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})",
        "torch": torch.__version__, "overrides": args.overrides, "total_seconds": round(sum(stage_seconds.values()), 1),
        "measured": measured, "study_estimate": estimate_study(measured, study, params),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["study_estimate"], indent=2))
    print(f"-> {args.out}")
    if not measured["torchrun"]["ok"]:
        raise SystemExit(f"torchrun ({backend}) failed:\n{measured['torchrun']['tail']}")


if __name__ == "__main__":
    main()
