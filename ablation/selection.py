"""The screen's choice: of the controls and of the mixes listed in params, the one with the highest val
accuracy at the screen seed (ties: the first listed). Test numbers play no part."""

from __future__ import annotations

import json
from pathlib import Path

from ablation.config import AblationConfig
from runtime.errors import UserError

ROLES = {"control": "controls", "mix": "mixes"}


def screen_results(screen_dir: Path, abl: AblationConfig) -> dict[str, dict]:
    """arm -> its screen metrics, for every control and mix in params (files of arms no longer listed are ignored)."""
    out = {}
    for name in (*abl.controls, *abl.mixes):
        path = Path(screen_dir) / f"{name}.json"
        if not path.is_file():
            raise UserError(f"{path}: screen run of '{name}' not found; run `dvc repro` (stages train_control, train_mix)")
        m = json.loads(path.read_text())
        if m.get("seed") != abl.screen_seed:
            raise UserError(f"{path}: screened with seed {m.get('seed')}, but ablation.screen_seed is {abl.screen_seed}; "
                            "rerun the screen (dvc repro)")
        out[name] = m
    return out


def choose(role: str, screen: dict[str, dict], abl: AblationConfig) -> dict:
    """{arm, val_accuracy, candidates: {arm: val accuracy}} for role 'control' or 'mix'."""
    names = getattr(abl, ROLES[role])
    candidates = {n: screen[n]["val_accuracy_tta"] for n in names}
    best = max(names, key=lambda n: (candidates[n], -names.index(n)))
    return {"arm": best, "val_accuracy": candidates[best], "candidates": candidates, "screen_seed": abl.screen_seed,
            "rule": f"highest val accuracy (flip TTA) of the listed {ROLES[role]} at seed {abl.screen_seed}"}
