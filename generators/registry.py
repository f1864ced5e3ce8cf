"""Generator kinds behind one small registry: for each `generator.kind`, how to train it, save it,
read its final quality, load its sampler, and which sampling option `generate` passes it.

Stages ask the registry (`KINDS[cfg.kind]`, `load_sampler(path)`) and never branch on the kind, so a
new kind is a new entry here plus its own modules. Each entry imports its modules inside its methods:
diffusers loads only when the diffusion kind is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from generators.config import DiffusionConfig, GanConfig, GenerateConfig, GeneratorConfig
from generators.sampling import ConditionalSampler, read_metadata
from quality.probe import QualityProbe
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS


class GeneratorKind(Protocol):
    name: str

    def settings(self, cfg: GeneratorConfig) -> Any: ...  # the kind's own section of `generator:`
    def check(self, settings: Any, judge) -> None: ...  # UserError when the settings need what is missing
    def train(self, images: torch.Tensor, labels: torch.Tensor, settings: Any, **loop: Any) -> Any: ...
    def save(self, folder: Path, result: Any, settings: Any, extra: dict) -> None: ...  # the generator folder
    def final_quality(self, result: Any, settings: Any, judge, train) -> dict: ...
    def load_sampler(self, folder: Path) -> ConditionalSampler: ...
    def sample_options(self, cfg: GenerateConfig) -> dict: ...


class Gan:
    name = "gan"

    def settings(self, cfg: GeneratorConfig) -> GanConfig:
        return cfg.gan

    def check(self, settings: GanConfig, judge) -> None:
        if judge is None and (settings.d_kind == "projected" or settings.judge_guidance > 0):
            raise UserError("generator.gan.d_kind 'projected' and judge_guidance > 0 need the judge; pass its path "
                            "(models/judge/model.safetensors) or set d_kind: plain and judge_guidance: 0")

    def train(self, images, labels, settings: GanConfig, **loop):
        from generators.gan_training import GanDivergedError, train_gan

        try:
            return train_gan(images, labels, settings, **loop)
        except GanDivergedError as e:
            raise UserError(str(e)) from None

    def save(self, path: Path, result, settings: GanConfig, extra: dict) -> None:
        from generators.gan_sampling import save_generator

        save_generator(path, result.generator, settings, **extra)

    def final_quality(self, result, settings: GanConfig, judge, train) -> dict:
        """The loop's last reading when it was taken at the last step, else one taken now."""
        if result.quality and result.quality.get("step") == result.steps:
            return {k: v for k, v in result.quality.items() if k != "step"}
        from generators.gan_sampling import sample

        probe = QualityProbe(judge, train.images, train.labels, settings.quality_samples, settings.seed)
        return probe(lambda y, seeds: sample(result.generator, y, seeds))

    def load_sampler(self, path: Path) -> ConditionalSampler:
        from generators.gan_sampling import GanSampler, load_generator

        return GanSampler(*load_generator(path))

    def sample_options(self, cfg: GenerateConfig) -> dict:
        return {"truncation": cfg.truncation}


class Diffusion:
    name = "diffusion"

    def settings(self, cfg: GeneratorConfig) -> DiffusionConfig:
        return cfg.diffusion

    def check(self, settings: DiffusionConfig, judge) -> None:
        pass  # the judge only takes quality readings, which are skipped without it

    def train(self, images, labels, settings: DiffusionConfig, **loop):
        from generators.diffusion_training import train_diffusion

        try:
            return train_diffusion(images, labels, settings, **loop)
        except FloatingPointError as e:
            raise UserError(str(e)) from None

    def save(self, path: Path, result, settings: DiffusionConfig, extra: dict) -> None:
        from generators.diffusion_sampling import save_diffusion_sampler

        save_diffusion_sampler(path, result.ema_model, settings, **extra)

    def final_quality(self, result, settings: DiffusionConfig, judge, train) -> dict:
        from generators.diffusion_sampling import DiffusionSampler

        sampler = DiffusionSampler(result.ema_model, settings)
        probe = QualityProbe(judge, train.images, train.labels, settings.quality_per_class * len(EXPRESSIONS),
                             settings.seed)
        return probe(lambda y, seeds: sampler.sample(y, seeds))

    def load_sampler(self, path: Path) -> ConditionalSampler:
        from generators.diffusion_sampling import load_diffusion_sampler

        return load_diffusion_sampler(path)

    def sample_options(self, cfg: GenerateConfig) -> dict:
        return {"guidance_scale": cfg.guidance_scale}


KINDS: dict[str, GeneratorKind] = {kind.name: kind for kind in (Gan(), Diffusion())}


def load_sampler(path: str | Path) -> ConditionalSampler:
    """The sampler for a generator folder of any registered kind (its fersynth.json names the kind)."""
    meta = read_metadata(path)
    kind = meta.get("kind")
    if kind == "none":
        raise UserError(f"{path}: no generator was trained here ({meta.get('reason')}); its faces come from "
                        f"{meta.get('folder')}. Set generate.source: model to train one")
    if kind not in KINDS:
        raise UserError(f"{path}: unknown generator kind {kind!r} in its metadata (expected one of {', '.join(KINDS)})")
    return KINDS[kind].load_sampler(Path(path))
