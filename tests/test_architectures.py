"""Tests for classifiers.architectures: shapes, gradients, features, feature maps, errors."""

from __future__ import annotations

import os

import pytest
import torch

from classifiers.architectures import ARCHITECTURES, ExpressionNet, build_model, count_parameters
from runtime.errors import UserError

torch.set_num_threads(2)

CONFIGS = [
    ("compact_cnn", "none", 1.0),
    ("compact_cnn", "se", 1.0),
    ("compact_cnn", "cbam", 1.0),
    ("vgg_fer", "none", 0.5),
    ("vgg_fer", "se", 0.25),
    ("vgg_fer", "cbam", 0.25),
    ("resnet18", "none", 1.0),
    ("mobilenet_v3_small", "none", 1.0),
]


def _batch(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 48, 48, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name,attention,width", CONFIGS)
def test_forward_backward_features_maps(name: str, attention: str, width: float) -> None:
    torch.manual_seed(0)
    model = build_model(name, attention=attention, width=width)
    assert isinstance(model, ExpressionNet)
    n = 2 if name in ("resnet18", "mobilenet_v3_small") else 4  # heavy at 48x48: keep the test fast
    x = _batch(n)

    logits = model(x)
    assert logits.shape == (n, 7)
    logits.logsumexp(dim=1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has non-finite gradient"

    model.eval()
    with torch.no_grad():
        feats = model.features(x)
        assert feats.shape == (n, model.feature_dim)
        # features are exactly what the head sees
        torch.testing.assert_close(model.head(feats), model(x))
        maps = model.feature_maps(x)
    assert len(maps) == 3
    sizes = [m.shape[-1] for m in maps]
    assert sizes == [24, 12, 6], sizes
    assert all(m.shape[0] == n and m.shape[-2] == m.shape[-1] for m in maps)
    assert tuple(m.shape[1] for m in maps) == model.feature_map_channels
    assert count_parameters(model) > 0


def test_architectures_tuple_and_width() -> None:
    assert set(ARCHITECTURES) == {"compact_cnn", "vgg_fer", "resnet18", "mobilenet_v3_small"}
    small = count_parameters(build_model("vgg_fer", width=0.5))
    big = count_parameters(build_model("vgg_fer", width=1.0))
    assert small < big / 3
    assert 0.8e6 < count_parameters(build_model("compact_cnn")) < 1.6e6


def test_unknown_name_and_bad_options() -> None:
    with pytest.raises(UserError, match="compact_cnn.*vgg_fer.*resnet18.*mobilenet_v3_small"):
        build_model("alexnet")
    with pytest.raises(UserError, match="attention"):
        build_model("compact_cnn", attention="transformer")
    with pytest.raises(UserError, match="attention"):
        build_model("resnet18", attention="se")
    with pytest.raises(UserError, match="width"):
        build_model("resnet18", width=0.5)
    with pytest.raises(UserError, match="pretrained"):
        build_model("vgg_fer", pretrained=True)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    "name,filename",
    [("resnet18", "resnet18-f37072fd.pth"), ("mobilenet_v3_small", "mobilenet_v3_small-047dcff4.pth")],
)
def test_pretrained_offline_missing_file(hub_dir, name: str, filename: str) -> None:
    expected = os.path.join(str(hub_dir), "checkpoints", filename)
    with pytest.raises(UserError) as info:
        build_model(name, pretrained=True)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert not os.path.exists(expected)  # nothing was downloaded


def test_pretrained_loads_cached_file_and_sums_rgb(hub_dir) -> None:
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    (hub_dir / "checkpoints").mkdir()
    torch.save(reference.state_dict(), hub_dir / "checkpoints" / "resnet18-f37072fd.pth")

    model = build_model("resnet18", pretrained=True)
    stem = model.stages[0][0]
    assert stem.in_channels == 1 and stem.stride == (1, 1)
    torch.testing.assert_close(stem.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.stages[3][0].conv1.weight, reference.layer4[0].conv1.weight)
    assert model(_batch(2)).shape == (2, 7)


def test_pretrained_corrupt_file(hub_dir) -> None:
    (hub_dir / "checkpoints").mkdir()
    (hub_dir / "checkpoints" / "mobilenet_v3_small-047dcff4.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="mobilenet_v3_small-047dcff4.pth"):
        build_model("mobilenet_v3_small", pretrained=True)
