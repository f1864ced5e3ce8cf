"""dvclive logging for the training stages: one callback that logs every numeric key of a row."""

from __future__ import annotations

from pathlib import Path

from classifiers.training import is_main_process


def dvclive_logger(live_dir: Path | None):
    """A logging callback that writes every numeric key of a row as a dvclive metric."""
    if live_dir is None or not is_main_process():
        return None, None
    from dvclive import Live

    live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, resume=False)

    def log(row: dict, step: int) -> None:
        live.step = step
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                live.log_metric(key, value, plot=True)
        live.next_step()

    return live, log
