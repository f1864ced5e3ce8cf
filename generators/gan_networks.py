"""GAN networks for 48x48 grayscale faces, conditioned on one of seven expressions.

* `Generator`: z and a class embedding -> 6x6 map -> three (upsample x2, conv3x3, conditional BN,
  ReLU) x2 blocks -> 48x48 -> conv3x3 -> tanh, i.e. images in [-1, 1]. Conditional batch norm
  (per-class gamma/beta) carries the label into every block; FastGAN-style skip-layer excitation
  (Liu et al. 2021) lets the 6x6 and 12x12 maps gate the 24x24 and 48x48 channels (cheap global
  structure for the high-resolution layers).
* `PlainDiscriminator`: spectral-norm conv net with a projection head (Miyato & Koyama 2018).
* `ProjectedDiscriminator` (after Sauer et al. 2021, Projected GAN): the frozen judge's feature
  maps feed small spectral-norm heads, one per scale, each ending in a projection head; optionally
  one more head on the judge's penultimate features, where expressions are linearly separable, so
  D can tell "a face, but not an angry one" from "an angry face". Logits are summed.

The judge is held outside the module tree (not a parameter, not in the state dict, not moved by
`.to()`): it is an input of the discriminator, saved and hashed elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from classifiers.augment import MEAN, STD

NUM_CLASSES = 7


def to_judge_input(x: Tensor) -> Tensor:
    """Generator range [-1, 1] -> the judge's normalisation ((p - MEAN) / STD with p in [0, 1])."""
    return ((x + 1) * 0.5 - MEAN) / STD


# --------------------------------------------------------------------------------------------------
# generator


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine; per-class gamma (around 1) and beta instead."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Embedding(num_classes, channels)
        self.beta = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.bn(x) * self.gamma(y)[:, :, None, None] + self.beta(y)[:, :, None, None]


class UpBlock(nn.Module):
    """Nearest upsample x2, then two (conv3x3, conditional BN, ReLU)."""

    def __init__(self, cin: int, cout: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = ConditionalBatchNorm2d(cout, num_classes)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = ConditionalBatchNorm2d(cout, num_classes)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = F.relu(self.bn1(self.conv1(x), y))
        return F.relu(self.bn2(self.conv2(x), y))


class SkipExcitation(nn.Module):
    """FastGAN skip-layer excitation: a low-res map -> per-channel sigmoid gates for a high-res map."""

    def __init__(self, c_low: int, c_high: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), nn.Conv2d(c_low, c_high, 4), nn.SiLU(), nn.Conv2d(c_high, c_high, 1), nn.Sigmoid()
        )

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        return high * self.net(low)


class Generator(nn.Module):
    def __init__(self, z_dim: int, channels: tuple[int, int, int, int] | list[int], num_classes: int = NUM_CLASSES,
                 sle: bool = True) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels
        self.z_dim, self.num_classes, self.c0 = z_dim, num_classes, c0
        self.embed = nn.Embedding(num_classes, z_dim)  # also concatenated to z: the label shapes the layout too
        self.fc = nn.Linear(2 * z_dim, c0 * 36)
        self.bn0 = ConditionalBatchNorm2d(c0, num_classes)
        self.up12 = UpBlock(c0, c1, num_classes)
        self.up24 = UpBlock(c1, c2, num_classes)
        self.up48 = UpBlock(c2, c3, num_classes)
        self.sle24 = SkipExcitation(c0, c2) if sle else None
        self.sle48 = SkipExcitation(c1, c3) if sle else None
        self.to_image = nn.Conv2d(c3, 1, 3, padding=1)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h6 = self.fc(torch.cat([z, self.embed(y)], dim=1)).view(len(z), self.c0, 6, 6)
        h6 = F.relu(self.bn0(h6, y))
        h12 = self.up12(h6, y)
        h24 = self.up24(h12, y)
        if self.sle24 is not None:
            h24 = self.sle24(h24, h6)
        h48 = self.up48(h24, y)
        if self.sle48 is not None:
            h48 = self.sle48(h48, h12)
        return torch.tanh(self.to_image(h48))


# --------------------------------------------------------------------------------------------------
# discriminators


class ProjectionOutput(nn.Module):
    """Miyato & Koyama 2018: out = linear(h) + <embed(y), h>, h a pooled feature vector."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.linear = spectral_norm(nn.Linear(channels, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, channels))

    def forward(self, h: Tensor, y: Tensor) -> Tensor:
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


def _sn_conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2 if stride == 1 else 1))


class PlainDiscriminator(nn.Module):
    """48 -> 24 -> 12 -> 6 spectral-norm convs with leaky ReLU, sum pooling, projection output."""

    def __init__(self, channels: tuple[int, int, int, int] | list[int], num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels
        layers: list[nn.Module] = [_sn_conv(1, c0, 3), nn.LeakyReLU(0.2)]
        for cin, cout in ((c0, c1), (c1, c2), (c2, c3)):
            layers += [_sn_conv(cin, cout, 4, stride=2), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.out = ProjectionOutput(c3, num_classes)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.out(self.body(x).sum(dim=(2, 3)), y)


class _MapHead(nn.Module):
    """One scale of the projected D: conv3x3, then stride-2 convs down to 6x6, sum pool, projection."""

    def __init__(self, cin: int, size: int, channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [_sn_conv(cin, channels, 3), nn.LeakyReLU(0.2)]
        while size > 6:
            layers += [_sn_conv(channels, channels, 4, stride=2), nn.LeakyReLU(0.2)]
            size //= 2
        self.body = nn.Sequential(*layers)
        self.out = ProjectionOutput(channels, num_classes)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.out(self.body(x).sum(dim=(2, 3)), y)


class _VectorHead(nn.Module):
    def __init__(self, cin: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(spectral_norm(nn.Linear(cin, channels)), nn.LeakyReLU(0.2))
        self.out = ProjectionOutput(channels, num_classes)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.out(self.body(x), y)


class ProjectedDiscriminator(nn.Module):
    """Heads on a frozen judge's feature maps (and optionally its penultimate features).

    `judge_model` is an `ExpressionNet`; it is put in eval mode with requires_grad False and kept
    out of this module's parameters and state dict. Move it to the device yourself.
    """

    def __init__(self, judge_model: nn.Module, head_channels: int = 64, maps: tuple[int, ...] | list[int] = (0, 1, 2),
                 penultimate: bool = True, num_classes: int = NUM_CLASSES, image_size: int = 48) -> None:
        super().__init__()
        judge_model.eval().requires_grad_(False)
        object.__setattr__(self, "judge", judge_model)  # not a submodule: frozen input, saved elsewhere
        self.maps = tuple(maps)
        self.penultimate = penultimate
        with torch.no_grad():
            probe = judge_model.feature_maps(torch.zeros(1, 1, image_size, image_size,
                                                         device=next(judge_model.parameters()).device))
        self.heads = nn.ModuleList(
            _MapHead(probe[i].shape[1], probe[i].shape[-1], head_channels, num_classes) for i in self.maps
        )
        self.vector_head = _VectorHead(judge_model.feature_dim, head_channels, num_classes) if penultimate else None

    def train(self, mode: bool = True) -> "ProjectedDiscriminator":
        super().train(mode)
        self.judge.eval()  # BN statistics and dropout of the judge stay frozen
        return self

    def judge_features(self, x: Tensor) -> tuple[list[Tensor], Tensor | None]:
        """The judge's selected maps and (if used) penultimate features, for images in [-1, 1]."""
        net = self.judge
        h = to_judge_input(x)
        wanted = [net.feature_map_indices[i] for i in self.maps]
        last = len(net.stages) - 1 if self.penultimate else max(wanted)
        maps = []
        for i, stage in enumerate(net.stages):
            h = stage(h)
            if i in wanted:
                maps.append(h)
            if i == last:
                break
        return maps, (net.pool(h) if self.penultimate else None)

    def forward_with_logits(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """D's logit per image, and the judge's class logits when the penultimate head is on."""
        maps, feats = self.judge_features(x)
        out = sum(head(m, y) for head, m in zip(self.heads, maps))
        logits = None
        if feats is not None:
            out = out + self.vector_head(feats, y)
            logits = self.judge.head(feats)
        return out, logits

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.forward_with_logits(x, y)[0]


def judge_logits(judge_model: nn.Module, x: Tensor) -> Tensor:
    """The judge's class logits for generator-range images, differentiable w.r.t. x."""
    return judge_model(to_judge_input(x))


def build_generator(cfg) -> Generator:
    """From a GanConfig."""
    return Generator(cfg.z_dim, cfg.g_channels, sle=cfg.g_sle)


def build_discriminator(cfg, judge_model: nn.Module | None) -> nn.Module:
    """From a GanConfig; the projected kind needs the judge's model."""
    if cfg.d_kind == "plain":
        return PlainDiscriminator(cfg.d_channels)
    if judge_model is None:
        raise ValueError("d_kind 'projected' needs a judge (its frozen feature maps are the D's input)")
    return ProjectedDiscriminator(judge_model, cfg.d_head_channels, cfg.judge_maps, cfg.judge_penultimate)
