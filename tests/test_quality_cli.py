"""`fersynth quality`: its numbers are the quality/ metrics of the judge's features, computed here
directly from tensors; a set measured against itself reads as identical; bad paths are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from classifiers.architectures import model_from_config
from classifiers.config import TrainConfig
from classifiers.judge import Judge
from classifiers.saved_model import save_classifier
from classifiers.training import predict_proba, train_classifier
from facedata.prepared import LabelledImages, save_split
from facedata.sources.demo_faces import draw_demo_faces
from pipelines.cli import app
from quality.probe import gan_test, kid
from quality.set_metrics import density_coverage, fid, precision_recall

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def world(tmp_path, monkeypatch) -> Path:
    """Prepared real faces, a synthetic set of other faces, a random judge and an independent classifier."""
    monkeypatch.chdir(tmp_path)
    images, labels = draw_demo_faces([24] * 7, seed=1)
    for split, sl in (("train", slice(0, 140)), ("val", slice(140, 154)), ("test", slice(154, 168))):
        save_split(tmp_path / "prepared" / f"{split}.safetensors", LabelledImages(images[sl], labels[sl]))
    fake, fake_labels = draw_demo_faces([10] * 7, seed=99)
    fake[::2] = fake[::2] // 2 + 40  # half of them dim and flat: a set unlike real train, precision != recall
    (tmp_path / "synthetic").mkdir()
    save_file({"images": fake, "labels": fake_labels, "seeds": torch.arange(len(fake))},
              str(tmp_path / "synthetic" / "synthetic.safetensors"))
    # a judge trained for a moment: a random one maps every face to nearly the same features
    cfg = TrainConfig(arch="compact_cnn", width=0.25, epochs=2, batch_size=32, tta="none", threads=1)
    judge_model = train_classifier(images[:140], labels[:140], images[140:154], labels[140:154], cfg,
                                   progress=False).model
    Judge(judge_model, cfg).save(tmp_path / "judge.safetensors")
    clf_cfg = TrainConfig(arch="compact_cnn", width=0.25, tta="none")
    save_classifier(tmp_path / "clf.safetensors", model_from_config(clf_cfg), clf_cfg)
    (tmp_path / "params.yaml").write_text("filter: {lpips: false, inception: false}\n")
    return tmp_path


def quality(*extra: str) -> dict:
    args = ["quality", "--data", "prepared", "--judge", "judge.safetensors", "--out", "q.json", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(Path("q.json").read_text())


def test_quality_cli_numbers_are_the_metrics_of_the_judge_features(world):
    m = quality("--synthetic", "synthetic", "--classifier", "clf.safetensors")
    from facedata.prepared import load_split
    from facedata.synthetic import load_synthetic

    real = load_split(world / "prepared" / "train.safetensors")
    fake, _ = load_synthetic(world / "synthetic")
    judge = Judge.load(world / "judge.safetensors")
    r, f = judge.features(real.images), judge.features(fake.images)
    assert m["n_real"] == 140 and m["n_synthetic"] == 70
    assert m["fid"] == pytest.approx(fid(r, f), rel=1e-3)  # the CLI rounds to 4 significant places or so
    assert m["kid"] == pytest.approx(kid(r, f, seed=0), rel=1e-3)
    direct = {**precision_recall(r, f), **density_coverage(r, f)}
    assert direct["precision"] != direct["recall"]  # so a swap of real and fake shows
    for key, value in direct.items():
        assert m[key] == pytest.approx(value, abs=1e-4), key
    assert m["gan_test"] == gan_test(judge.probabilities(fake.images), fake.labels)
    from classifiers.saved_model import load_classifier

    model, clf_cfg, _ = load_classifier(world / "clf.safetensors")
    independent = gan_test(predict_proba(model, fake.images, clf_cfg), fake.labels)
    assert m["gan_test_independent"] == {"classifier": "clf.safetensors", **independent}
    for c, name in enumerate(("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")):
        rc, fc = r[real.labels == c], f[fake.labels == c]
        assert m["per_class"][name]["kid"] == pytest.approx(kid(rc, fc, subset_size=min(len(rc), len(fc))), rel=1e-3,
                                                            abs=1e-6)
    assert m["fid"] > 0 and m["inception_features"]  # says why the Inception rows are absent


def test_quality_of_real_train_against_itself_reads_as_the_same_distribution(world):
    save_file({"images": load_train(world).images, "labels": load_train(world).labels, "seeds": torch.arange(140)},
              str(world / "synthetic" / "synthetic.safetensors"))
    m = quality("--synthetic", "synthetic")
    assert m["fid"] == pytest.approx(0, abs=1e-3)
    assert abs(m["kid"]) < 2e-3  # unbiased: scatters around 0 (the dimmed set above reads ~0.015)
    assert m["precision"] == m["recall"] == m["coverage"] == 1.0


def load_train(world: Path) -> LabelledImages:
    from facedata.prepared import load_split

    return load_split(world / "prepared" / "train.safetensors")


def test_quality_cli_missing_inputs_are_one_line_errors(world):
    result = CliRunner().invoke(app, ["quality", "--synthetic", "nowhere", "--data", "prepared",
                                      "--judge", "judge.safetensors"])
    assert result.exit_code == 2 and "nowhere" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["quality", "--synthetic", "synthetic", "--data", "prepared",
                                      "--judge", "judge.safetensors", "--classifier", "absent.safetensors"])
    assert result.exit_code == 2 and "absent.safetensors" in result.output
    assert not Path("q.json").exists()


def write_png_folder(images: torch.Tensor, labels: torch.Tensor, root: Path, layout: str) -> None:
    """Faces as a script outside fersynth writes them: RGB PNGs, by class folder or with an HF metadata.csv."""
    from PIL import Image

    from runtime.labels import EXPRESSIONS

    rows = ["file_name,label"]
    for i, (image, label) in enumerate(zip(images[:, 0].numpy(), labels.tolist())):
        rel = f"{EXPRESSIONS[label]}/{i:05d}.png" if layout == "classes" else f"faces/{i:05d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert("RGB").save(root / rel)
        rows.append(f"{rel},{EXPRESSIONS[label]}")
    if layout == "metadata":
        (root / "metadata.csv").write_text("\n".join(rows) + "\n")


def test_quality_of_two_plain_folders_matches_the_same_faces_as_tensors(world):
    """--real and --synthetic as any two image folders (one by class, one an HF imagefolder) give exactly
    the numbers of the same faces read from fersynth's tensors."""
    from facedata.synthetic import load_synthetic

    fake, _ = load_synthetic(world / "synthetic")
    order = torch.argsort(fake.labels, stable=True)  # grouped by class, as class folders read back
    fake = LabelledImages(fake.images[order].contiguous(), fake.labels[order].contiguous())
    save_file({"images": fake.images, "labels": fake.labels, "seeds": order}, str(world / "synthetic" / "synthetic.safetensors"))
    write_png_folder(fake.images, fake.labels, world / "theirs", "classes")
    real = load_train(world)
    write_png_folder(real.images, real.labels, world / "real_png", "metadata")
    from_tensors = quality("--synthetic", "synthetic")
    result = CliRunner().invoke(app, ["quality", "--real", "real_png", "--synthetic", "theirs", "--judge", "judge.safetensors",
                                      "--out", "folders.json"])
    assert result.exit_code == 0, result.output
    from_folders = json.loads(Path("folders.json").read_text())
    assert from_folders["n_real"] == 140 and from_folders["n_synthetic"] == 70
    for key in ("fid", "kid", "precision", "recall", "density", "coverage", "gan_test", "per_class"):
        assert from_folders[key] == from_tensors[key], key
