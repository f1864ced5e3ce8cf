"""The judge: a real-data classifier, temperature-calibrated on val, used as the domain feature
space and label-fidelity oracle by the generators' quality readings and the filters."""

from __future__ import annotations

from pathlib import Path

import torch

from classifiers.augment import preprocess
from classifiers.config import TrainConfig
from classifiers.saved_model import load_classifier, save_classifier
from runtime.device import bf16_is_fast
from runtime.errors import UserError


class Judge:
    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, temperature: float = 1.0) -> None:
        self.model, self.cfg, self.temperature = model.eval(), cfg, float(temperature)
        self.memory_format = torch.contiguous_format

    def use_channels_last(self) -> "Judge":
        """NHWC weights and batches: oneDNN's and cuDNN's fast layout for bf16 convolutions."""
        self.model = self.model.to(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last
        return self

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Judge":
        model, cfg, meta = load_classifier(path)
        return cls(model.to(device), cfg, meta.get("temperature", 1.0))

    def save(self, path: str | Path, **extra) -> None:
        save_classifier(path, self.model, self.cfg, temperature=self.temperature, **extra)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fast_inference_available(self) -> bool:
        """bf16 autocast pays off on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX)."""
        return bf16_is_fast(self.device)

    def _batches(self, images_uint8: torch.Tensor, batch_size: int):
        for i in range(0, len(images_uint8), batch_size):
            x = preprocess(images_uint8[i : i + batch_size], self.cfg.augment.equalize).to(self.device)
            yield x.contiguous(memory_format=self.memory_format)

    def _autocast(self, fast: bool):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=fast and self.fast_inference_available())

    @torch.no_grad()
    def logits(self, images_uint8: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Uncalibrated logits for uint8 images N x 1 x 48 x 48."""
        out = [self.model(x).float().cpu() for x in self._batches(images_uint8, batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 7)

    def _embed(self, images_uint8: torch.Tensor, batch_size: int, fast: bool) -> torch.Tensor:
        """Penultimate features, float32, left on the judge's device."""
        with self._autocast(fast):
            out = [self.model.features(x).float() for x in self._batches(images_uint8, batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.model.feature_dim, device=self.device)

    @torch.no_grad()
    def features(self, images_uint8: torch.Tensor, batch_size: int = 512, fast: bool = False) -> torch.Tensor:
        """Penultimate-layer features (N x feature_dim); `fast`: bf16 autocast where it pays off."""
        return self._embed(images_uint8, batch_size, fast).cpu()

    @torch.no_grad()
    def features_and_probabilities(self, images_uint8: torch.Tensor, batch_size: int = 512, fast: bool = False
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both from one forward pass (half the cost of calling the two methods on large sets). The
        head runs in float32 on the features, so calibrated probabilities keep their precision."""
        f = self._embed(images_uint8, batch_size, fast)
        if not len(f):
            return f.cpu(), torch.zeros(0, 7)
        logits = torch.cat([self.model.head(chunk).float() for chunk in f.split(batch_size)])
        return f.cpu(), torch.softmax(logits.cpu() / self.temperature, dim=1)

    def probabilities(self, images_uint8: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Calibrated class probabilities: softmax(logits / temperature)."""
        return torch.softmax(self.logits(images_uint8, batch_size) / self.temperature, dim=1)


def load_judge(path: Path | None) -> Judge | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: judge not found; run `fersynth train-judge` (dvc repro train_judge) first")
    try:
        return Judge.load(path)
    except (ValueError, KeyError) as e:
        raise UserError(f"{path}: not a readable judge ({e}); rerun `fersynth train-judge`") from None
