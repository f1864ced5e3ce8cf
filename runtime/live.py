"""dvclive logging for the training stages: one callback that logs every numeric key of a row.

The callback keeps the curves of a run that resumes from a checkpoint. The training loop learns
whether it resumed (the checkpoint must match its settings and data) only after the logger
exists, so dvclive is opened on first use: `resume(step)`, called by a loop that resumed from a
checkpoint taken at `step`, opens it with `resume=True` and drops the rows a killed run logged
after that checkpoint (the resumed run logs those steps again); a first log row without it opens
dvclive fresh, which clears the curves of any earlier run.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

from runtime.device import is_main_process


def _value(text: str):
    """A value as dvclive wrote it to a .tsv: a number, or a string such as 'nan'."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def keep_rows_before(tsv: Path, end: int):
    """Drop the rows of a dvclive metric file at step >= `end`; returns the last value kept, or None."""
    with open(tsv, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if int(r["step"]) < end]
    if len(kept) < len(rows):
        tmp = tsv.with_name(f".{tsv.name}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fields, delimiter="\t", lineterminator=os.linesep)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, tsv)
    return _value(kept[-1][fields[-1]]) if kept else None


class LiveLog:
    """Callable (row, step) -> None that writes every numeric key of a row as a dvclive metric at `step`,
    one row per metric and step: logging a step again replaces that step's row and any after it."""

    def __init__(self, live_dir: Path):
        self.dir = Path(live_dir)
        self.live = None
        self.last_step: dict[str, int] = {}  # per metric, the last step its .tsv holds

    def _open(self, resume: bool):
        from dvclive import Live

        self.live = Live(str(self.dir), save_dvc_exp=False, dvcyaml=None, resume=resume)
        return self.live

    def resume(self, step: int) -> None:
        """Continue the curves of the run whose checkpoint at `step` the training loop resumed from."""
        live = self._open(resume=True)
        summary = {}
        for tsv in sorted((Path(live.plots_dir) / "metrics").rglob("*.tsv")):
            name = tsv.relative_to(Path(live.plots_dir) / "metrics").with_suffix("").as_posix()
            last = keep_rows_before(tsv, step + 1)
            if last is not None:
                summary[name] = last
                self.last_step[name] = step  # at most: a later step cannot collide
        live.summary = {**summary, "step": step}  # metrics.json as it stood at the checkpoint

    def __call__(self, row: dict, step: int) -> None:
        live = self.live or self._open(resume=False)
        live.step = step
        for key, value in row.items():
            if key == "step" or not isinstance(value, (int, float)):
                continue
            if self.last_step.get(key, -1) >= step:  # logged again (a finished run started again)
                keep_rows_before(Path(live.plots_dir) / "metrics" / f"{key}.tsv", step)
            live.log_metric(key, value, plot=True)
            self.last_step[key] = step
        live.next_step()

    def end(self) -> None:
        (self.live or self._open(resume=False)).end()


def dvclive_logger(live_dir: Path | None):
    """(live, log) for a training loop: both the same LiveLog (None, None without a folder or off rank 0)."""
    if live_dir is None or not is_main_process():
        return None, None
    log = LiveLog(live_dir)
    return log, log


def resume_log(log: Callable[[dict, int], None] | None, step: int) -> None:
    """Tell a logger that keeps its curves across runs (runtime.live.LiveLog) that this run resumed
    from a checkpoint taken at `step`, so it keeps the rows up to there and drops any after."""
    if log is not None and hasattr(log, "resume"):
        log.resume(step)
