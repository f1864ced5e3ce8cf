"""DVC reruns exactly what changed: each stage's code deps in dvc.yaml are the project files its
command imports, no more and no less, and bytecode or tool caches never make a stage look changed.

The import closure is read from the source (ast), not by running the stages: from the stage's
`fersynth <command>` function in the CLI (its own lazy imports, plus the CLI modules' top-level
imports), then every project module it reaches, counting imports anywhere in those modules
(a function-level import is still code the stage may run) and the `__init__.py` of every package
on the way. `python tests/test_dvc_deps.py` prints each stage's closure, to paste into dvc.yaml.
"""

from __future__ import annotations

import ast
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
PACKAGES = ("pipelines", "classifiers", "generators", "quality", "runtime", "facedata", "figures", "tools", "ablation")
CLI_MODULES = ("pipelines/cli.py", "pipelines/cli_common.py", "pipelines/cli_tools.py")


def module_files(module: str) -> list[str]:
    """The files Python executes to import `module`: each package's __init__.py on the way, then the module."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return []
    files = []
    for i in range(1, len(parts) + 1):
        base = REPO.joinpath(*parts[:i])
        if (base / "__init__.py").is_file():
            files.append((base / "__init__.py").relative_to(REPO).as_posix())
        elif base.with_suffix(".py").is_file():
            files.append(base.with_suffix(".py").relative_to(REPO).as_posix())
            break
        else:
            raise AssertionError(f"import of {module}: no file for {'.'.join(parts[:i])}")
    return files


def imports_in(nodes: list[ast.AST]) -> list[str]:
    """Absolute module names imported anywhere in these nodes (`from p import m` counts p.m when m is a module)."""
    found = []
    for tree in nodes:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append(node.module)
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    path = REPO.joinpath(*sub.split("."))
                    if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
                        found.append(sub)
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError("relative imports are not followed here; use absolute imports")
    return found


def closure(start: list[str]) -> set[str]:
    """Project files reached from these modules, following every import in each file."""
    seen: set[str] = set()
    todo = [f for m in start for f in module_files(m)]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        tree = ast.parse((REPO / rel).read_text())
        # the CLI modules hold every command: only their top level runs for any one stage
        nodes = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))] if rel in CLI_MODULES else [tree]
        todo += [f for m in imports_in(nodes) for f in module_files(m)]
    return seen


def command_functions() -> dict[str, ast.FunctionDef]:
    """CLI command name -> its function, from @app.command() decorators in the CLI modules."""
    commands = {}
    for rel in CLI_MODULES:
        for node in ast.parse((REPO / rel).read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "command":
                    name = dec.args[0].value if dec.args else node.name.rstrip("_").replace("_", "-")
                    commands[name] = node
    return commands


def stage_closure(cmd: str) -> set[str]:
    """Project files a `fersynth <command>` stage runs: the CLI's top level and that command's imports."""
    words = cmd.split()
    assert words[0] == "fersynth", f"stage command {cmd!r} is not a fersynth command"
    fn = command_functions()[words[1]]
    return closure(["pipelines.cli", *imports_in(list(fn.body))])


def declared_code_deps(deps: list) -> set[str]:
    """dvc.yaml deps that are project code, folders expanded to their .py files."""
    files = set()
    for dep in deps:
        dep = str(dep)
        if dep.split("/")[0] not in PACKAGES:
            continue
        path = REPO / dep
        if path.is_dir():
            files |= {p.relative_to(REPO).as_posix() for p in path.rglob("*.py") if "__pycache__" not in p.parts}
        else:
            files.add(dep)
    return files


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_code_deps_are_its_import_closure(name):
    stage = stages()[name]
    want = stage_closure(stage["cmd"])
    have = declared_code_deps(stage.get("deps", []))
    assert have == want, (f"dvc.yaml stage '{name}': missing {sorted(want - have)}, "
                          f"not imported {sorted(have - want)}")


def test_every_dep_is_a_project_file_or_another_stages_output():
    """A dep that names nothing (a folder moved away) makes `dvc repro` fail on the user's machine."""
    outs = set()
    for stage in stages().values():
        for out in [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]:
            outs.add(str(next(iter(out)) if isinstance(out, dict) else out).split("${")[0])
    params = yaml.safe_load((REPO / "params.yaml").read_text())

    def resolved(dep: str) -> str:  # ${section.key} from params.yaml, as dvc templating does
        return re.sub(r"\$\{([\w.]+)\}", lambda m: str(_lookup(params, m.group(1))), dep)

    missing = [f"{name}: {dep}" for name, stage in stages().items() for dep in map(resolved, map(str, stage.get("deps", [])))
               if not (REPO / dep).exists() and not any(dep.startswith(o) or o.startswith(dep) for o in outs)]
    assert not missing, missing


def _lookup(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def test_closure_follows_lazy_imports_and_packages():
    """The analysis itself: a stage's lazy import inside its command is followed, with the package's __init__."""
    got = stage_closure("fersynth prepare")
    assert {"pipelines/prepare.py", "facedata/sources/__init__.py", "facedata/sources/fer2013_csv.py",
            "pipelines/__init__.py", "pipelines/cli.py"} <= got
    assert "pipelines/report.py" not in got  # another command's lazy import is not this stage's


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", "DVC_NO_ANALYTICS": "1",
            **extra}


def test_bytecode_and_tool_caches_leave_dvc_status_clean(tmp_path):
    """A user's Python writes __pycache__/ into the code folders stages depend on (these machines set
    PYTHONDONTWRITEBYTECODE=1, which hid it), and pytest its .pytest_cache/: .dvcignore must keep DVC
    from seeing either as a change of a folder dep. Checked on a stage that depends on every code folder,
    first with the project's .dvcignore (clean), then without it (changed: the check can fail)."""
    for rel in PACKAGES:
        shutil.copytree(REPO / rel, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(REPO / ".dvcignore", tmp_path / ".dvcignore")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"code": {"cmd": "true", "deps": list(PACKAGES)}}}))

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)

    assert run("dvc", "init", "--no-scm", "-q").returncode == 0
    first = run("dvc", "repro")
    assert first.returncode == 0, first.stderr[-2000:]
    modules = sorted({".".join(Path(f).with_suffix("").parts).removesuffix(".__init__")
                      for f in declared_code_deps(list(PACKAGES))})
    imported = run(sys.executable, "-c", "import importlib, sys\n[importlib.import_module(m) for m in sys.argv[1:]]",
                   *modules)
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert list(tmp_path.glob("classifiers/__pycache__/*.pyc")), "no bytecode was written: the check proves nothing"
    (tmp_path / "quality" / ".pytest_cache").mkdir()
    (tmp_path / "quality" / ".pytest_cache" / "README.md").write_text("cache\n")
    clean = run("dvc", "status", "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout) == {}, clean.stdout[:2000]

    (tmp_path / ".dvcignore").write_text("")
    dirty = run("dvc", "status", "--json")
    assert json.loads(dirty.stdout) != {}, "without .dvcignore the bytecode should count as a change"


if __name__ == "__main__":
    for stage_name, stage in stages().items():
        print(f"{stage_name}:")
        for f in sorted(stage_closure(stage["cmd"])):
            print(f"      - {f}")
