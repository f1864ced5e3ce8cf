"""What every training loop shares, so that each loop shows only its own step: the run's fingerprint
(its settings and a sha256 of all its data), resuming from `last.safetensors` when the fingerprint
matches, saving atomically from rank 0, the wall-clock budget (`max_minutes`, agreed across torchrun
ranks so all stop at the same step), and the progress bar.

    run = ResumableRun("GAN training", checkpoint_dir, run_fingerprint(cfg, images, labels, world),
                       max_minutes=cfg.max_minutes, rank=rank, world=world, log=log)
    restored = run.restore()            # (tensors, meta) of a matching checkpoint, or None
    if restored: ...load the loop's own state...; run.resumed(f"step {step}", log_step=step)
    run.begin()
    while ...: if run.budget_used() >= 1: break; ...step...; run.save(tensors, meta)

A checkpoint made with other settings or data is never loaded: the run says so and starts afresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from runtime import checkpoint as ckpt
from runtime.config import Section
from runtime.live import resume_log


def run_fingerprint(cfg: Section, images: torch.Tensor, labels: torch.Tensor, world: int = 1, **extra) -> dict:
    """What a checkpoint must have been made with to be resumed: the config's fingerprint, the number
    of processes, and every training image and label (sha256)."""
    return {"config": cfg.fingerprint(), "world": world, "n_train": len(labels),
            "data_sha256": ckpt.data_digest(images, labels), **extra}


def progress_bar(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=False)


class ResumableRun:
    """One training run's checkpoint file, clock and budget (see the module docstring)."""

    def __init__(self, name: str, checkpoint_dir: Path | None, fingerprint: dict, *, max_minutes: float | None,
                 rank: int = 0, world: int = 1, log: Callable[[dict, int], None] | None = None) -> None:
        self.name, self.fingerprint, self.max_minutes = name, fingerprint, max_minutes
        self.rank, self.world, self.log = rank, world, log
        self.path = Path(checkpoint_dir) / "last.safetensors" if checkpoint_dir else None
        self._before, self._start = 0.0, time.perf_counter()

    def say(self, message: str) -> None:
        if self.rank == 0:
            print(message, flush=True)

    def restore(self, complete: Callable[[dict], bool] = lambda tensors: True) -> tuple[dict, dict] | None:
        """(tensors, meta) of the checkpoint when this very run made it (same fingerprint, and `complete`
        says it holds all the loop needs); the clock then continues from the checkpoint's time."""
        if self.path is None or not self.path.exists():
            return None
        tensors, meta = ckpt.load_checkpoint(self.path)
        if meta.get("fingerprint") != self.fingerprint or not complete(tensors):
            self.say(f"{self.path} was made with other settings or data; starting afresh")
            return None
        self._before, self._start = meta["elapsed"], time.perf_counter()
        return tensors, meta

    def resumed(self, where: str, log_step: int) -> None:
        """Say where the run resumed, and let the dvclive logger keep its curves up to `log_step`."""
        self.say(f"resuming {self.name} from {self.path} at {where}")
        if self.rank == 0:
            resume_log(self.log, log_step)

    def begin(self) -> None:
        """Start the clock (right before the loop: set-up is not charged to the budget)."""
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of this run so far, killed runs before it included."""
        return self._before + time.perf_counter() - self._start

    def budget_used(self, elapsed: float | None = None) -> float:
        """Fraction of max_minutes used (0 without a budget); the largest over all ranks."""
        if self.max_minutes is None:
            return 0.0
        used = (self.elapsed() if elapsed is None else elapsed) / (60 * self.max_minutes)
        if self.world > 1:  # all ranks must stop at the same step
            used_t = torch.tensor([used], dtype=torch.float64)
            dist.all_reduce(used_t, op=dist.ReduceOp.MAX)
            used = float(used_t)
        return used

    def save(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Write the checkpoint (rank 0 only; atomically), stamped with the fingerprint and the clock."""
        if self.path is not None and self.rank == 0:
            ckpt.save_checkpoint(self.path, tensors, {**meta, "fingerprint": self.fingerprint, "elapsed": self.elapsed()})
