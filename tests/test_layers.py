"""The house stays readable: packages stand on floors and import only what stands below them, the ground
floor (`runtime/`) imports nothing of the project, stages never import stages, and there is no circle of
imports. Read from the source (ast), every import counted, a function-level one too.

    runtime/                      errors, labels, atomic writes, checkpoints, device/torchrun, dvclive
    facedata/  figures/           data formats and prepared/synthetic sets; charts and image grids
    classifiers/                  networks, augmentation, the training loop, the judge
    quality/                      every measurement: set metrics, probe, per-image scores, decisions, CAS
    generators/                   GAN and diffusion behind generators/registry.py
    tools/                        user tools beside the DVC stages (evaluate, predict, explain, export, ...)
    ablation/                    the ablation's statistics, figures and rendered report
    pipelines/                    one module per dvc.yaml stage, the params sections, the CLI
"""

from __future__ import annotations

import yaml
from test_dvc_deps import PACKAGES, REPO, imports_in, module_files

FLOORS = {"runtime": 0, "facedata": 1, "figures": 1, "classifiers": 2, "quality": 3, "generators": 4, "tools": 5,
          "ablation": 6, "pipelines": 7}
CLI = {"pipelines/cli.py", "pipelines/cli_common.py", "pipelines/cli_tools.py"}


def project_files() -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
                  if "__pycache__" not in p.parts)


def arrows() -> dict[str, set[str]]:
    """file -> the project files it imports (each package's __init__.py on the way left out)."""
    import ast

    out = {}
    for rel in project_files():
        tree = ast.parse((REPO / rel).read_text())
        targets = {f for m in imports_in([tree]) for f in module_files(m)[-1:]}
        out[rel] = {t for t in targets if t != rel and not t.endswith("__init__.py")}
    return out


def stage_modules() -> set[str]:
    """pipelines/<stage>.py for every stage module the CLI runs for a dvc.yaml stage."""
    from test_dvc_deps import command_functions

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    commands = command_functions()
    found = set()
    for stage in stages.values():
        fn = commands[stage["cmd"].split()[1]]
        found |= {f for m in imports_in(list(fn.body)) for f in module_files(m)[-1:]
                  if f.startswith("pipelines/") and f not in CLI and f != "pipelines/config.py"}
    return found


def test_every_package_has_a_floor():
    assert set(PACKAGES) == set(FLOORS)


def test_imports_only_run_down_the_floors():
    up = [f"{a} -> {b}" for a, targets in arrows().items() for b in targets
          if a.split("/")[0] != b.split("/")[0] and FLOORS[b.split("/")[0]] >= FLOORS[a.split("/")[0]]]
    assert not up, "imports that run back up (or sideways between packages on one floor):\n" + "\n".join(up)


def test_the_ground_floor_imports_nothing_above_it():
    assert all(b.startswith("runtime/") for a, t in arrows().items() if a.startswith("runtime/") for b in t)


def test_stages_never_import_stages():
    stages, graph = stage_modules(), arrows()
    assert {"pipelines/prepare.py", "pipelines/train_generator.py", "pipelines/filter.py", "pipelines/report.py"} <= stages
    crossing = [f"{a} -> {b}" for a in stages for b in graph[a] if b in stages]
    assert not crossing, crossing


def test_no_circle_of_imports():
    graph = arrows()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in graph:
        if start not in state:
            visit(start, [start])
