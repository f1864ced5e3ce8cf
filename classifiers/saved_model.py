"""A trained classifier on disk: weights in safetensors plus the config needed to rebuild it."""

from __future__ import annotations

from pathlib import Path

import torch

from classifiers.config import TrainConfig
from runtime import checkpoint as ckpt


def save_classifier(path: str | Path, model: torch.nn.Module, cfg: TrainConfig, **extra) -> None:
    ckpt.save_checkpoint(path, model.state_dict(), {"config": cfg.to_dict(), **extra})


def load_classifier(path: str | Path) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """Model in eval mode on CPU, its training config, and the rest of the saved metadata."""
    from classifiers.architectures import model_from_config

    tensors, meta = ckpt.load_checkpoint(path)
    cfg = TrainConfig(**{**meta["config"], "pretrained": False})
    model = model_from_config(cfg)
    model.load_state_dict(tensors)
    model.eval()
    return model, cfg, meta
