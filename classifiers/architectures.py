"""Expression-recognition CNNs for 48x48 grayscale faces.

Every network is an `ExpressionNet`: a list of `stages` (each halving the resolution, except where
noted), a `pool` that turns the last stage's map into a (N, D) feature vector, and a `head` that maps
those features to class logits. The common wrapper gives every architecture the same interface:

* `model(x)`               -> (N, num_classes) logits, x is float (N, 1, 48, 48), normalised
* `model.features(x)`      -> (N, feature_dim) penultimate features (exactly what the head sees)
* `model.feature_dim`      -> int
* `model.feature_maps(x)`  -> three intermediate maps at decreasing resolution (24, 12, 6 for
                              48x48 input), for a projected-GAN discriminator
* `model.feature_map_channels` -> channel counts of those three maps

Architectures (`ARCHITECTURES`):

* `compact_cnn`         4 blocks of (conv3x3-BN-ReLU) x2, maxpool, dropout; channels 32-64-128-256
                        (x width); global average pool, FC 256. ~1.2M params at width 1.
* `vgg_fer`             VGG-style FER net after Khaireddin & Chen 2021 (73.28% on FER2013): 4 stages
                        of (conv3x3-BN-ReLU) x2 + maxpool, channels 64-128-256-512 (x width), the
                        3x3 map flattened (faces are aligned, so position matters) into two FC layers
                        with dropout. The paper's FC layers are 4096 wide; here 1024 x width.
* `resnet18`            torchvision resnet18, 1-channel 3x3 stride-1 stem, no stem maxpool (layer1 runs
                        at 48x48). With `pretrained` the ImageNet 7x7 stem kernel is kept (RGB
                        kernels summed) but run at stride 1.
* `mobilenet_v3_small`  torchvision mobilenet_v3_small, 1-channel stem with stride 1 (48 -> 24 -> 12 ->
                        6 -> 3 through its blocks); `width` maps to torchvision's width_mult.

`pretrained=True` (resnet18, mobilenet_v3_small only) loads torchvision's IMAGENET1K_V1 weights via
the weights API, but only from the torch hub cache (`torch.hub.get_dir()/checkpoints/<file>`): a
missing file is a UserError naming the exact path, never a download attempt.

`attention` ("none" | "se" | "cbam") inserts a squeeze-excitation or CBAM block at the end of each
stage (after its max-pool) of compact_cnn and vgg_fer.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import SqueezeExcitation

from classifiers.config import TrainConfig
from runtime.errors import UserError

ARCHITECTURES: tuple[str, ...] = ("compact_cnn", "vgg_fer", "resnet18", "mobilenet_v3_small")
ATTENTIONS: tuple[str, ...] = ("none", "se", "cbam")
PRETRAINABLE: tuple[str, ...] = ("resnet18", "mobilenet_v3_small")
WIDTH_SCALABLE: tuple[str, ...] = ("compact_cnn", "vgg_fer", "mobilenet_v3_small")
ATTENTION_CAPABLE: tuple[str, ...] = ("compact_cnn", "vgg_fer")


class ExpressionNet(nn.Module):
    """stages -> pool -> head, with access to penultimate features and intermediate maps."""

    def __init__(
        self,
        *,
        name: str,
        stages: Sequence[nn.Module],
        pool: nn.Module,
        head: nn.Module,
        feature_dim: int,
        feature_map_indices: tuple[int, int, int],
    ) -> None:
        super().__init__()
        if len(feature_map_indices) != 3 or max(feature_map_indices) >= len(stages):
            raise ValueError(f"bad feature_map_indices {feature_map_indices} for {len(stages)} stages")
        self.name = name
        self.stages = nn.ModuleList(stages)
        self.pool = pool
        self.head = head
        self.feature_dim = int(feature_dim)
        self.feature_map_indices = tuple(int(i) for i in feature_map_indices)
        self.feature_map_channels: tuple[int, ...] = ()  # filled in by build_model

    def features(self, x: Tensor) -> Tensor:
        """(N, feature_dim) features: the input of the classification head."""
        for stage in self.stages:
            x = stage(x)
        return self.pool(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """Outputs of three stages, at decreasing resolution (24x24, 12x12, 6x6 for 48x48 input)."""
        maps: list[Tensor] = []
        last = max(self.feature_map_indices)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.feature_map_indices:
                maps.append(x)
            if i == last:
                break
        return maps


# --------------------------------------------------------------------------------------------------
# attention blocks


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel then spatial attention.

    Hand-written because torchvision ships squeeze-excitation (`torchvision.ops.SqueezeExcitation`)
    but no CBAM.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=True),
        )
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = x.amax(dim=(2, 3), keepdim=True)
        x = x * torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


def _attention(kind: str, channels: int) -> nn.Module:
    if kind == "se":
        return SqueezeExcitation(channels, max(8, channels // 16))
    if kind == "cbam":
        return CBAM(channels)
    return nn.Identity()


# --------------------------------------------------------------------------------------------------
# plain CNNs: compact_cnn and vgg_fer


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _vgg_stage(cin: int, cout: int, attention: str, dropout: float) -> nn.Sequential:
    layers = _conv_bn_relu(cin, cout) + _conv_bn_relu(cout, cout)
    layers.append(nn.MaxPool2d(2))
    # Attention after the pool: SE's positive per-channel scale commutes with max-pooling, so this is
    # the same SE at a quarter of the cost; CBAM gets a coarser spatial map for the same 4x saving.
    layers.append(_attention(attention, cout))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _init_plain(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _scaled(channels: int, width: float) -> int:
    return max(8, int(round(channels * width / 8.0)) * 8)


def _compact_cnn(num_classes: int, attention: str, width: float, dropout: float) -> ExpressionNet:
    chans = [_scaled(c, width) for c in (32, 64, 128, 256)]
    stage_dropout = dropout / 2  # light dropout after each pool, the classic FER-CNN recipe
    stages, cin = [], 1
    for c in chans:
        stages.append(_vgg_stage(cin, c, attention, stage_dropout))
        cin = c
    hidden = _scaled(256, width)
    pool = nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(cin, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
    )
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    net = ExpressionNet(
        name="compact_cnn", stages=stages, pool=pool, head=head, feature_dim=hidden, feature_map_indices=(0, 1, 2)
    )
    _init_plain(net)
    return net


def _vgg_fer(num_classes: int, attention: str, width: float, dropout: float) -> ExpressionNet:
    chans = [_scaled(c, width) for c in (64, 128, 256, 512)]
    stages, cin = [], 1
    for c in chans:
        stages.append(_vgg_stage(cin, c, attention, 0.0))
        cin = c
    hidden = _scaled(1024, width)
    # 48 -> 24 -> 12 -> 6 -> 3; AdaptiveAvgPool2d(3) is a no-op at 48x48 and keeps other sizes working.
    pool = nn.Sequential(
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(cin * 9, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
    )
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    net = ExpressionNet(
        name="vgg_fer", stages=stages, pool=pool, head=head, feature_dim=hidden, feature_map_indices=(0, 1, 2)
    )
    _init_plain(net)
    return net


# --------------------------------------------------------------------------------------------------
# torchvision backbones


def _weights_cache_path(weights: torchvision.models.WeightsEnum) -> str:
    """Where torch.hub looks for (and would download) this checkpoint."""
    filename = os.path.basename(urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _require_cached(name: str, weights: torchvision.models.WeightsEnum) -> None:
    """Fail with a user-fixable message instead of letting torchvision try to download offline."""
    path = _weights_cache_path(weights)
    if not os.path.isfile(path):
        raise UserError(
            f"pretrained weights for {name} are not cached: place the file {os.path.basename(path)} "
            f"(download it from {weights.url}) at {path} (torch hub checkpoints dir; set TORCH_HOME to "
            f"move it), or set pretrained: false"
        )


def _load_pretrained(
    name: str, weights: torchvision.models.WeightsEnum, factory: Callable[..., nn.Module]
) -> nn.Module:
    _require_cached(name, weights)
    try:
        return factory(weights=weights, progress=False)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        # truncated / corrupt / not-a-checkpoint file, or a state dict with the wrong keys
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"cannot load pretrained weights for {name} from {_weights_cache_path(weights)} "
            f"({type(exc).__name__}: {first_line}); delete it and place a fresh copy of {weights.url} there"
        ) from exc


def _one_channel_conv(conv: nn.Conv2d, *, kernel_size: int, stride: int, pretrained: bool) -> nn.Conv2d:
    """A 1-channel replacement for an RGB stem conv; pretrained RGB kernels are summed.

    Summing the RGB kernels gives the response the RGB filter would have to a gray image replicated
    on three channels (our normalisation, mean 0.5 / std 0.25, is close to ImageNet's per-channel
    mean ~0.45 / std ~0.23, so the pretrained statistics roughly carry over).
    """
    if pretrained:
        kernel_size = conv.kernel_size[0]  # keep the pretrained kernel, only change stride/channels
    new = nn.Conv2d(
        1, conv.out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=conv.bias is not None
    )
    if pretrained:
        with torch.no_grad():
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    else:
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
    return new


def _resnet18(num_classes: int, dropout: float, pretrained: bool) -> ExpressionNet:
    from torchvision.models import ResNet18_Weights, resnet18

    if pretrained:
        base = _load_pretrained("resnet18", ResNet18_Weights.IMAGENET1K_V1, resnet18)
    else:
        base = resnet18(weights=None)
    # 48x48 faces: 3x3 stride-1 stem (7x7 kept when pretrained), no maxpool -> layer1 runs at 48x48.
    conv1 = _one_channel_conv(base.conv1, kernel_size=3, stride=1, pretrained=pretrained)
    stem_and_layer1 = nn.Sequential(conv1, base.bn1, base.relu, base.layer1)  # 48x48
    stages = [stem_and_layer1, base.layer2, base.layer3, base.layer4]  # 48, 24, 12, 6
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(base.fc.in_features, num_classes))
    return ExpressionNet(
        name="resnet18", stages=stages, pool=pool, head=head, feature_dim=base.fc.in_features,
        feature_map_indices=(1, 2, 3),
    )


def _mobilenet_v3_small(num_classes: int, width: float, dropout: float, pretrained: bool) -> ExpressionNet:
    from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

    if pretrained:
        base = _load_pretrained("mobilenet_v3_small", MobileNet_V3_Small_Weights.IMAGENET1K_V1, mobilenet_v3_small)
    else:
        base = mobilenet_v3_small(weights=None, width_mult=width)
    f = base.features
    stem = f[0]  # Conv2dNormActivation(3, 16, k3, s2)
    stem[0] = _one_channel_conv(stem[0], kernel_size=3, stride=1, pretrained=pretrained)
    # stride-1 stem: 48 -> f[1] 24 -> f[2:4] 12 -> f[4:9] 6 -> f[9:] 3
    stages = [f[0:2], f[2:4], f[4:9], f[9:]]
    hidden = base.classifier[0].out_features
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), base.classifier[0], base.classifier[1])
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    return ExpressionNet(
        name="mobilenet_v3_small", stages=stages, pool=pool, head=head, feature_dim=hidden,
        feature_map_indices=(0, 1, 2),
    )


# --------------------------------------------------------------------------------------------------
# public API


def build_model(
    name: str,
    *,
    num_classes: int = 7,
    attention: str = "none",
    width: float = 1.0,
    dropout: float = 0.3,
    pretrained: bool = False,
) -> ExpressionNet:
    """Build an expression classifier for (N, 1, 48, 48) normalised input; raises UserError on bad options."""
    if name not in ARCHITECTURES:
        raise UserError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}")
    if attention not in ATTENTIONS:
        raise UserError(f"unknown attention {attention!r}; choose one of: {', '.join(ATTENTIONS)}")
    if attention != "none" and name not in ATTENTION_CAPABLE:
        raise UserError(
            f"attention {attention!r} is only available for {', '.join(ATTENTION_CAPABLE)}, not {name}; "
            f"set attention: none"
        )
    if not (width > 0):
        raise UserError(f"width must be > 0, got {width}")
    if width != 1.0 and name not in WIDTH_SCALABLE:
        raise UserError(f"width is only adjustable for {', '.join(WIDTH_SCALABLE)}, not {name}; set width: 1.0")
    if not (0.0 <= dropout < 1.0):
        raise UserError(f"dropout must be in [0, 1), got {dropout}")
    if num_classes < 2:
        raise UserError(f"num_classes must be >= 2, got {num_classes}")
    if pretrained:
        if name not in PRETRAINABLE:
            raise UserError(
                f"pretrained weights exist only for {', '.join(PRETRAINABLE)}, not {name}; set pretrained: false"
            )
        if width != 1.0:
            raise UserError(f"pretrained {name} needs width 1.0 (the ImageNet weights), got {width}")

    if name == "compact_cnn":
        model = _compact_cnn(num_classes, attention, width, dropout)
    elif name == "vgg_fer":
        model = _vgg_fer(num_classes, attention, width, dropout)
    elif name == "resnet18":
        model = _resnet18(num_classes, dropout, pretrained)
    else:
        model = _mobilenet_v3_small(num_classes, width, dropout, pretrained)
    model.feature_map_channels = _feature_map_channels(model)
    return model


def _feature_map_channels(model: ExpressionNet) -> tuple[int, ...]:
    """Channel counts of the maps returned by feature_maps (one tiny eval-mode forward)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps = model.feature_maps(torch.zeros(1, 1, 48, 48))
    finally:
        model.train(was_training)
    return tuple(int(m.shape[1]) for m in maps)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_from_config(cfg: TrainConfig) -> torch.nn.Module:
    return build_model(cfg.arch, attention=cfg.attention, width=cfg.width, dropout=cfg.dropout, pretrained=cfg.pretrained)
