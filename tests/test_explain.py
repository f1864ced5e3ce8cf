"""fersynth explain: Grad-CAM maps have the face's shape, respond to the image, and come out as PNG."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from classifiers.architectures import ARCHITECTURES, build_model
from classifiers.saved_model import save_classifier
from facedata.prepared import save_split
from tests.conftest import train_tiny_classifier
from tools.explain import default_layer, gradcam, gradcam_grid, sample_per_class


@pytest.fixture(scope="module")
def trained():
    """A tiny compact_cnn trained for ~6 s on demo faces (65% val accuracy, chance 14%)."""
    return train_tiny_classifier(epochs=10)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_default_layer_keeps_a_6x6_map(arch, one_thread):
    model = build_model(arch, width=0.25 if arch in ("compact_cnn", "vgg_fer") else 1.0).eval()
    layer = default_layer(model)
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    model(torch.zeros(1, 1, 48, 48))
    handle.remove()
    assert min(seen["shape"][-2:]) >= 6
    assert layer is not model.stages[0]  # deeper than the first stage, or the maps are just edges


def test_gradcam_shape_range_and_response_to_the_image(trained, one_thread):
    model, cfg, val = trained
    faces, labels = val.images[:14], val.labels[:14]
    maps = gradcam(model, cfg, faces, labels)
    assert maps.shape == (14, 48, 48) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    spread = maps.flatten(1).std(1)
    assert (spread > 0.05).float().mean() >= 0.75  # not constant
    # two different faces give different maps
    distinct = [(maps[i] - maps[j]).abs().mean() for i in range(7) for j in range(i + 1, 7)]
    assert float(torch.stack(distinct).median()) > 0.05


def test_gradcam_marks_the_regions_the_prediction_depends_on(trained, one_thread):
    """Deletion check: graying out the 12x12 block with the most Grad-CAM mass costs the explained class
    far more probability than graying out the block with the least (a map unrelated to the model would not)."""
    from classifiers.training import predict_proba

    model, cfg, val = trained
    faces, labels = val.images[:28], val.labels[:28]
    mass = torch.nn.functional.avg_pool2d(gradcam(model, cfg, faces, labels)[:, None], 12).flatten(1)  # 4x4 blocks

    def drop(blocks: torch.Tensor) -> torch.Tensor:
        grayed = faces.clone()
        for i, b in enumerate(blocks.tolist()):
            r, c = divmod(b, 4)
            grayed[i, :, 12 * r : 12 * r + 12, 12 * c : 12 * c + 12] = 128
        rows = torch.arange(len(faces))
        return predict_proba(model, faces, cfg)[rows, labels] - predict_proba(model, grayed, cfg)[rows, labels]

    most, least = drop(mass.argmax(1)).mean(), drop(mass.argmin(1)).mean()
    assert most > least + 0.02 and most > 3 * least


def test_gradcam_depends_on_the_class(trained, one_thread):
    model, cfg, val = trained
    faces = val.images[:8]
    happy, sad = gradcam(model, cfg, faces, "happy"), gradcam(model, cfg, faces, 4)
    assert (happy - sad).abs().mean() > 0.02


def test_gradcam_grid_png_bytes_and_file(trained, tmp_path, one_thread):
    model, cfg, val = trained
    index = sample_per_class(val.labels, 2, seed=0)
    assert torch.equal(val.labels[index], torch.arange(7).repeat_interleave(2))
    png = gradcam_grid(model, cfg, val.images[index], val.labels[index], ncols=2)
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG")
    path = gradcam_grid(model, cfg, val.images[index], "surprise", tmp_path / "cam" / "grid.png", ncols=2, title="t")
    assert path == tmp_path / "cam" / "grid.png"
    width, height = Image.open(path).size
    assert height > width  # 7 pairs of rows, 2 columns
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary file left


def test_cli_explain_on_prepared_faces(trained, tmp_path, one_thread):
    import pipelines.cli_tools  # noqa: F401  (registers the commands)
    from pipelines.cli import app

    model, cfg, val = trained
    save_classifier(tmp_path / "model.safetensors", model, cfg)
    save_split(tmp_path / "prepared" / "test.safetensors", val)
    args = ["explain", "--model", str(tmp_path / "model.safetensors"), "--data", str(tmp_path / "prepared"),
            "--per-class", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "cam.png")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "cam.png").format == "PNG"
    bad = CliRunner().invoke(app, [*args, "--target", "joy", "--out", str(tmp_path / "bad.png")])
    assert bad.exit_code == 2 and "'--target'" in bad.stderr and "'joy' is not one of" in bad.stderr
    assert not (tmp_path / "bad.png").exists()
