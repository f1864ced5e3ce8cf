"""The filter stage on a hand-made synthetic set: planted copies, duplicates, blanks and wrong labels
are rejected for the right reason; outputs, refill and errors (export: tests/test_export_dataset.py)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import save_file

from classifiers.architectures import model_from_config
from classifiers.config import TrainConfig
from classifiers.judge import Judge
from facedata.prepared import LabelledImages, save_split
from facedata.sources.demo_faces import draw_demo_faces
from facedata.synthetic import load_sources
from pipelines.filter import run_filter
from quality.config import FilterConfig
from quality.inception import HOW_TO_INSTALL, weights_path
from runtime.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("filter")
    images, labels = draw_demo_faces([30] * 7, seed=1)
    prepared = root / "prepared"
    prepared.mkdir()
    for split, sl in (("train", slice(0, 150)), ("val", slice(150, 180)), ("test", slice(180, 210))):
        save_split(prepared / f"{split}.safetensors", LabelledImages(images[sl], labels[sl]))
    (prepared / "manifest.json").write_text(json.dumps({"source": "demo", "counts": {"train": {}}}))
    torch.manual_seed(0)
    cfg = TrainConfig(arch="vgg_fer", width=0.125, dropout=0.0)
    judge_path = root / "judge.safetensors"
    Judge(model_from_config(cfg), cfg).save(judge_path)

    fresh, fresh_labels = draw_demo_faces([10] * 7, seed=99)  # new faces: none is a training face
    synth = torch.cat([fresh, images[:3], fresh[:1], torch.full((1, 1, 48, 48), 128, dtype=torch.uint8)])
    synth_labels = torch.cat([fresh_labels, labels[:3], fresh_labels[:1], torch.tensor([0])])
    synthetic = root / "synthetic"
    synthetic.mkdir()
    save_file({"images": synth, "labels": synth_labels, "seeds": torch.arange(len(synth))}, str(synthetic / "synthetic.safetensors"))
    return root, prepared, synthetic, judge_path


def run(world, tmp_path, **cfg):
    root, prepared, synthetic, judge_path = world
    base = dict(label_fidelity=False, realism=False, min_keep_fraction=0.0, lpips=False, inception=False)
    return run_filter(FilterConfig(**{**base, **cfg}), prepared, synthetic, judge_path, tmp_path / "filtered",
                      tmp_path / "quality.json", tmp_path / "plots")


def test_one_pass_features_and_probabilities_match_the_separate_calls(world):
    judge = Judge.load(world[3])
    images = draw_demo_faces([3] * 7, seed=4)[0]
    feats, probs = judge.features_and_probabilities(images, batch_size=8)
    assert torch.allclose(feats, judge.features(images), atol=1e-5)
    assert torch.allclose(probs, judge.probabilities(images), atol=1e-5)


def test_bf16_judge_features_stay_close_to_float32(world):
    """The filter's fast path (bf16 autocast where the hardware has it) must not move the geometry."""
    judge = Judge.load(world[3])
    images = draw_demo_faces([6] * 7, seed=5)[0]
    f32, p32 = judge.features_and_probabilities(images)
    f16, p16 = judge.features_and_probabilities(images, fast=True)
    if not judge.fast_inference_available():
        assert torch.equal(f16, f32)  # no native bf16: the flag changes nothing
        return
    assert not torch.equal(f16, f32)  # the flag did switch precision
    assert torch.nn.functional.cosine_similarity(f16, f32, dim=1).min() > 0.995
    assert (p16 - p32).abs().max() < 0.05
    fcl, pcl = Judge.load(world[3]).use_channels_last().features_and_probabilities(images, fast=True)  # the filter's path
    assert torch.nn.functional.cosine_similarity(fcl, f32, dim=1).min() > 0.995
    assert (pcl - p32).abs().max() < 0.05


def test_copies_duplicates_and_blanks_are_rejected_for_the_right_reason(world, tmp_path):
    q = run(world, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "filtered" / "manifest.csv")))
    assert len(rows) == 75
    reasons = [r["reason"] for r in rows]
    assert reasons[70:73] == ["memorization"] * 3  # exact training faces
    assert reasons[73] == "duplicate"  # the same image as synthetic #0, which stays
    assert reasons[0] == "" and reasons[74] == "degenerate"
    assert q["n_kept"] == sum(r["kept"] == "True" for r in rows) and q["copies_of_training_faces"] >= 3
    for key in ("fid", "kid", "precision", "recall", "density", "coverage", "gan_test"):
        assert key in q["before"] and key in q["after"], key
    assert (tmp_path / "plots" / "kept_rejected.png").stat().st_size > 0
    assert (tmp_path / "plots" / "nearest_pairs.png").stat().st_size > 0
    assert "feature-space" in q["memorization_distance"] or "LPIPS" in q["memorization_distance"]


@pytest.mark.skipif(weights_path() is None, reason=f"no Inception-v3 weights: {HOW_TO_INSTALL}")
def test_inception_fid_and_kid_before_and_after_filtering(world, tmp_path):
    q = run(world, tmp_path, inception=True, inception_samples=14)
    assert q["inception_features"].startswith("Inception-v3")
    for when in ("before", "after"):
        inc = q[when]["inception"]
        assert inc["n_real"] == 14 and inc["n_synthetic"] == 14  # 2 per class, stratified
        assert inc["fid"] > 0 and set(inc["per_class"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}


def test_without_inception_weights_the_report_says_how_to_get_them(world, tmp_path, monkeypatch):
    monkeypatch.setenv("FERSYNTH_INCEPTION", str(tmp_path / "absent.pt"))
    q = run(world, tmp_path, inception=True)
    assert "absent.pt" in q["inception_features"] and "inception" not in q["before"]


def test_planted_copies_exact_noisy_and_shifted_are_all_rejected_as_memorized(world, tmp_path):
    root, prepared, _, judge_path = world
    train = draw_demo_faces([30] * 7, seed=1)[0][:150]
    fresh, fresh_labels = draw_demo_faces([10] * 7, seed=99)
    g = torch.Generator().manual_seed(0)
    exact = train[20:25]
    noisy = (train[25:30].float() + 3 * torch.randn(5, 1, 48, 48, generator=g)).clamp(0, 255).to(torch.uint8)
    shifted = torch.roll(train[30:35], shifts=1, dims=3)
    planted = torch.cat([exact, noisy, shifted])
    synthetic = tmp_path / "planted"
    synthetic.mkdir()
    save_file({"images": torch.cat([fresh, planted]), "labels": torch.cat([fresh_labels, torch.zeros(15, dtype=torch.long)]),
               "seeds": torch.arange(85)}, str(synthetic / "synthetic.safetensors"))
    cfg = FilterConfig(label_fidelity=False, realism=False, min_keep_fraction=0.0, lpips=False, inception=False)
    q = run_filter(cfg, prepared, synthetic, judge_path, tmp_path / "f", tmp_path / "q.json", tmp_path / "p")
    reasons = [r["reason"] for r in csv.DictReader(open(tmp_path / "f" / "manifest.csv"))]
    assert reasons[70:] == ["memorization"] * 15
    fr = q["memorization_false_rejection_on_real_test"]
    assert fr["real_test_faces"] == 30 and 0 <= fr["rejected_excluding_exact_copies"] <= 0.1


def test_strict_label_filter_warns_and_refills_each_class(world, tmp_path):
    q = run(world, tmp_path, label_fidelity=True, label_tau=0.99, min_keep_fraction=0.5, refill=True)
    assert q["rejected"]["label_fidelity"]["total"] > 0
    assert all(q["kept_per_class"][e] >= 5 for e in q["kept_per_class"])  # 10 per class generated
    assert q["warnings"]
    rows = list(csv.DictReader(open(tmp_path / "filtered" / "manifest.csv")))
    assert any(r["reason"].startswith("refilled") for r in rows)
    assert not any(r["kept"] == "True" and "memorization" in r["reason"] for r in rows)


def test_missing_inputs_are_one_line_errors(world, tmp_path):
    root, prepared, synthetic, judge_path = world
    with pytest.raises(UserError, match="judge not found"):
        run_filter(FilterConfig(), prepared, synthetic, root / "nope.safetensors", tmp_path / "f")
    with pytest.raises(UserError, match="synthetic set not found"):
        run_filter(FilterConfig(), prepared, root / "nothing", judge_path, tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_cas_before_and_after_filtering_lands_in_quality_json_and_the_report_table(world, tmp_path):
    from ablation.render import quality_table_md
    from quality.cas import cas_accuracy

    off = run(world, tmp_path / "off")
    assert "off" in off["cas"] and cas_accuracy(off, "before") == "n/a"
    q = run(world, tmp_path, cas_steps=4, cas_rounds=1)
    assert json.loads((tmp_path / "quality.json").read_text())["cas"]["steps"] == 4
    for when in ("before", "after"):
        assert 0 <= cas_accuracy(q, when) <= 1 and q["cas"][when]["n_train"] == sum(q["cas"]["n_per_class"].values())
    assert "cas_before_after" in q["seconds"]
    row = next(r for r in quality_table_md(q) if r.startswith("| CAS accuracy"))
    assert str(cas_accuracy(q, "before")) in row and "after − before" in row


def test_edits_near_their_own_source_are_not_copies_but_unchanged_ones_are_rejected(world, tmp_path):
    """An edit of a real face is near that face by design: memorization measures the distance to every
    other training face, and an edit too close to its own source is rejected as unchanged."""
    from facedata.prepared import load_split

    root, prepared, _, judge_path = world
    train = load_split(prepared / "train.safetensors")
    g = torch.Generator().manual_seed(0)
    mild = (train.images[10:20].float() + 12 * torch.randn(10, 1, 48, 48, generator=g)).clamp(0, 255).to(torch.uint8)
    images = torch.cat([train.images[:3], mild, train.images[30:31]])
    sources = torch.tensor([0, 1, 2, *range(10, 20), 40])  # the last is a copy of face 30, edited "from" face 40
    labels = (train.labels[sources] + 1) % 7
    for name, extra in (("as_samples", {}), ("as_edits", {"sources": sources})):
        (tmp_path / name).mkdir()
        save_file({"images": images, "labels": labels, "seeds": torch.arange(len(images)), **extra},
                  str(tmp_path / name / "synthetic.safetensors"))
    reasons = {}
    for name in ("as_samples", "as_edits"):
        run_filter(FilterConfig(label_fidelity=False, realism=False, min_keep_fraction=0.0, lpips=False, inception=False,
                                duplicates=False), prepared, tmp_path / name, judge_path, tmp_path / f"f_{name}",
                   tmp_path / f"q_{name}.json", tmp_path / "plots")
        rows = list(csv.DictReader(open(tmp_path / f"f_{name}" / "manifest.csv")))
        reasons[name] = [r["reason"] for r in rows]
    assert reasons["as_samples"][3:13].count("memorization") >= 8  # mild edits ARE close to a training face ...
    assert reasons["as_edits"][:3] == ["unchanged"] * 3  # ... untouched sources are unchanged edits
    assert "memorization" not in reasons["as_edits"][3:13]  # ... but their closeness to their own source is by design
    assert reasons["as_edits"][13] == "memorization"  # a copy of someone other than its source is still a copy
    kept = load_sources(tmp_path / "f_as_edits")
    assert kept is not None and set(kept.tolist()) <= set(sources.tolist())
