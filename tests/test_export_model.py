"""fersynth export-model: the ONNX graph matches PyTorch within 1e-4 at any batch size, and the int8
models run, give probabilities and keep the fp32 model's predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from classifiers.saved_model import save_classifier
from facedata.prepared import LabelledImages, save_split
from facedata.sources.demo_faces import draw_demo_faces
from tests.conftest import train_tiny_classifier
from tools.export_model import PARITY_ATOL, export_onnx, onnx_outputs, onnx_pixels, parity, quantize_int8, session


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny compact_cnn trained for a few seconds on demo faces (~50% val accuracy, chance 14%)."""
    return train_tiny_classifier(epochs=6)


@pytest.fixture(scope="module")
def onnx_files(trained, tmp_path_factory):
    model, cfg, val = trained
    out = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model, cfg, out / "model.onnx")
    return {"fp32": fp32, **quantize_int8(fp32, out, onnx_pixels(val.images[:64], cfg))}


@pytest.mark.parametrize("n", [1, 7, 33])
def test_onnx_matches_pytorch_at_any_batch_size(trained, onnx_files, n, one_thread):
    model, cfg, _ = trained
    faces, _ = draw_demo_faces(5, seed=9)
    result = parity(model, cfg, session(onnx_files["fp32"], threads=1), faces[:n])
    assert result["n"] == n
    assert result["max_abs_logits"] <= PARITY_ATOL
    assert result["max_abs_probabilities"] <= PARITY_ATOL


def test_onnx_file_is_self_contained_and_labelled(onnx_files):
    import onnx

    graph = onnx.load(str(onnx_files["fp32"]))
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["expressions"] == "angry,disgust,fear,happy,sad,surprise,neutral"
    assert props["arch"] == "compact_cnn"
    assert not list(onnx_files["fp32"].parent.glob("*.data"))  # weights inside, no external data file


@pytest.mark.parametrize("variant", ["int8_dynamic", "int8_static"])
def test_int8_models_run_and_keep_the_predictions(trained, onnx_files, variant, one_thread):
    _, cfg, _ = trained
    faces, labels = draw_demo_faces(15, seed=11)
    pixels = onnx_pixels(faces, cfg)
    _, fp32 = onnx_outputs(session(onnx_files["fp32"], threads=1), pixels)
    logits, probs = onnx_outputs(session(onnx_files[variant], threads=1), pixels)
    assert probs.shape == (len(faces), 7) and np.isfinite(logits).all()
    assert (probs >= 0).all() and np.allclose(probs.sum(1), 1, atol=1e-3)
    assert (probs.argmax(1) == fp32.argmax(1)).mean() >= 0.8
    # on average close; one low-margin face of this barely trained model may move ~0.3 (per-tensor static)
    assert np.abs(probs - fp32).mean() < 0.05 and np.abs(probs - fp32).max() < 0.5
    fp32_acc = (fp32.argmax(1) == labels.numpy()).mean()
    assert (probs.argmax(1) == labels.numpy()).mean() >= fp32_acc - 0.1
    assert onnx_files[variant].stat().st_size < onnx_files["fp32"].stat().st_size


def test_cli_export_model_writes_models_and_metrics(trained, tmp_path, one_thread):
    import pipelines.cli_tools  # noqa: F401  (registers the commands)
    from pipelines.cli import app

    model, cfg, val = trained
    save_classifier(tmp_path / "model.safetensors", model, cfg)
    data = tmp_path / "prepared"
    test_faces = LabelledImages(*draw_demo_faces(10, seed=12))
    for split, part in (("train", val), ("val", val), ("test", test_faces)):
        save_split(data / f"{split}.safetensors", part)
    out, metrics = tmp_path / "onnx", tmp_path / "export.json"
    result = CliRunner().invoke(app, ["export-model", "--model", str(tmp_path / "model.safetensors"), "--data", str(data),
                                      "--out", str(out), "--metrics", str(metrics), "--calibration-size", "64",
                                      "--parity-size", "32"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["model.int8-dynamic.onnx", "model.int8-static.onnx", "model.onnx"]
    m = json.loads(metrics.read_text())
    assert m["parity"]["max_abs_logits"] <= PARITY_ATOL
    assert m["test"]["n"] == 70
    assert set(m["variants"]) == {"fp32", "int8_dynamic", "int8_static"}
    assert m["variants"]["fp32"]["test_accuracy"] == pytest.approx(m["test"]["pytorch_accuracy"], abs=1 / 70 + 1e-9)
    for v in m["variants"].values():
        assert 0 <= v["test_accuracy"] <= 1 and "accuracy_change_vs_fp32" in v


def test_cli_export_model_needs_data_to_quantise(trained, tmp_path):
    import pipelines.cli_tools  # noqa: F401
    from pipelines.cli import app

    model, cfg, _ = trained
    save_classifier(tmp_path / "model.safetensors", model, cfg)
    result = CliRunner().invoke(app, ["export-model", "--model", str(tmp_path / "model.safetensors"),
                                      "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 2
    assert "fersynth prepare" in result.stderr
    assert not (tmp_path / "onnx").exists()
    missing = CliRunner().invoke(app, ["export-model", "--model", str(tmp_path / "nope.safetensors")])
    assert missing.exit_code == 2 and "run `dvc repro` first or pass --model" in missing.stderr
