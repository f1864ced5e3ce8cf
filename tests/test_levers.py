"""The ablation's levers and controls, each checked on demo faces for doing what it says (and not nothing):
soft targets, batch shares, loss weights, mixup / CutMix, distillation, arm names, the screen's choice,
and the filter's confidence band and coverage selection."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ablation.arms import arm_inputs
from ablation.config import AblationConfig
from ablation.names import parse_arm
from ablation.selection import choose, screen_results
from classifiers.augment import AugmentConfig, preprocess
from classifiers.batches import BatchMix, SharedSet, loss
from classifiers.config import TrainConfig
from classifiers.training import _Batches, stream_of_passes, train_classifier
from facedata.prepared import LabelledImages
from facedata.sources.demo_faces import draw_demo_faces
from quality.config import FilterConfig
from quality.coverage_selection import cover_real
from quality.decisions import decide, select_for_coverage

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def faces():
    real = LabelledImages(*draw_demo_faces(20, seed=1))  # 140 faces, 20 per expression
    synthetic = LabelledImages(*draw_demo_faces(30, seed=2))  # 210
    return real, synthetic


def fake_teacher(images: torch.Tensor) -> torch.Tensor:
    """Deterministic, clearly not one-hot: probabilities from the mean brightness."""
    g = images.float().mean(dim=(1, 2, 3))
    logits = torch.stack([g / (10 + k) for k in range(7)], 1)
    return torch.softmax(logits, 1)


def cfg(**over) -> TrainConfig:
    base = dict(arch="compact_cnn", width=0.25, steps=6, epochs=2, batch_size=16, lr=0.01, warmup_epochs=0,
                dropout=0, tta="none", device="cpu", threads=1, amp=False, channels_last=False)
    return TrainConfig(**{**base, **over})


def test_arm_names_parse_every_lever_and_reject_nonsense():
    a = parse_arm("soft-s0.25-w0.5")
    assert (a.kind, a.labels, a.mixing, a.amount, a.weight) == ("mix", "soft", "batch_share", 0.25, 0.5)
    assert parse_arm("hard-r2").ratio == 2 and parse_arm("mixup").kind == "control"
    for bad in ("soft-s1", "hard-r0", "soft-x0.5", "r0.5", "mixup2"):
        with pytest.raises(ValueError):
            parse_arm(bad)
    with pytest.raises(ValueError, match="screen_seed"):
        AblationConfig(seeds=[0, 1], screen_seed=1)


def test_soft_targets_are_the_teachers_probabilities_not_one_hot(faces):
    real, synthetic = faces
    abl = AblationConfig(soft_weight=1.0)
    soft = arm_inputs(parse_arm("soft-r0.5"), real, synthetic, abl, cfg(), fake_teacher)
    hard = arm_inputs(parse_arm("hard-r0.5"), real, synthetic, abl, cfg(), fake_teacher)
    t = soft.levers["targets"]
    n_real = len(real)
    assert t.shape == (len(soft.train), 7) and torch.allclose(t.sum(1), torch.ones(len(t)))
    assert torch.equal(t[:n_real], F.one_hot(real.labels, 7).float())  # real faces keep their labels
    synth = soft.train.subset(torch.arange(n_real, len(soft.train)))
    assert torch.allclose(t[n_real:], fake_teacher(synth.images))  # synthetic faces: the teacher, not the label
    assert not torch.equal(t[n_real:], F.one_hot(synth.labels, 7).float())
    assert "targets" not in hard.levers and torch.equal(hard.train.images, soft.train.images)
    half = arm_inputs(parse_arm("soft-r0.5"), real, synthetic, AblationConfig(soft_weight=0.5), cfg(), fake_teacher)
    expected = 0.5 * F.one_hot(synth.labels, 7).float() + 0.5 * fake_teacher(synth.images)
    assert torch.allclose(half.levers["targets"][n_real:], expected)


def test_distill_control_mixes_the_teacher_into_real_targets(faces):
    real, _ = faces
    d = arm_inputs(parse_arm("distill"), real, None, AblationConfig(distill_weight=0.3), cfg(), fake_teacher)
    assert len(d.train) == len(real)
    assert torch.allclose(d.levers["targets"], 0.7 * F.one_hot(real.labels, 7).float() + 0.3 * fake_teacher(real.images))


def test_soft_targets_change_the_loss_and_the_trained_weights(faces):
    real, _ = faces
    logits = torch.randn(8, 7)
    y = real.labels[:8]
    soft = fake_teacher(real.images[:8])
    assert torch.isclose(loss(logits, y, None, None, None, 0.1),
                         loss(logits, y, F.one_hot(y, 7).float(), None, None, 0.1))  # hard == one-hot targets
    assert not torch.isclose(loss(logits, y, soft, None, None, 0.1), loss(logits, y, None, None, None, 0.1))
    w = torch.tensor([1.0] * 4 + [0.0] * 4)
    assert torch.isclose(loss(logits, y, None, w, None, 0.0), F.cross_entropy(logits[:4], y[:4]))  # weight 0 = absent
    plain = train_classifier(*real, *real, cfg(), progress=False).model.state_dict()
    taught = train_classifier(*real, *real, cfg(), targets=fake_teacher(real.images), progress=False).model.state_dict()
    assert any(not torch.equal(plain[k], taught[k]) for k in plain if plain[k].is_floating_point())


def test_batch_share_keeps_the_real_only_batch_and_adds_the_share(faces):
    real, synthetic = faces
    abl = AblationConfig()
    c = cfg(augment=AugmentConfig.off())
    inputs = arm_inputs(parse_arm("soft-s0.25-w0.5"), real, synthetic, abl, c, fake_teacher)
    shared = inputs.levers["shared"]
    assert shared.per_batch == round(16 * 0.25 / 0.75) == 5 and inputs.record["batch"] == 21
    assert torch.equal(inputs.train.images, real.images)  # the main set is real train, as in the real-only arm
    pool_counts = torch.bincount(shared.labels, minlength=7)
    assert (pool_counts == pool_counts[0]).all()  # follows the (balanced) real class mix
    x = preprocess(real.images, False)
    batches = _Batches(c, x, real.labels, None, None, shared, None, 0, 1, torch.device("cpu"))
    steps = 3
    real_order = stream_of_passes(len(real), 0, steps * 16, seed=7)
    batches.start_epoch(real_order, 0, steps)
    g = torch.Generator().manual_seed(0)
    for s in range(steps):
        xb, yb, tb, wb = batches.step(s, g)
        assert len(xb) == 21 and int((wb == 0.5).sum()) == 5 and int((wb == 1).sum()) == 16
        idx = real_order[s * 16 : (s + 1) * 16]
        assert torch.equal(xb[:16], x[idx]) and torch.equal(yb[:16], real.labels[idx])  # the same real faces
        assert torch.equal(tb[:16], F.one_hot(real.labels[idx], 7).float())
        assert not torch.equal(tb[16:], F.one_hot(yb[16:], 7).float())  # soft targets on the shared part
    # two ranks split the real batch and the shared part between them, together the whole batch
    halves = [_Batches(c, x, real.labels, None, None, shared, None, r, 2, torch.device("cpu")) for r in (0, 1)]
    for b in halves:
        b.start_epoch(real_order, 0, steps)
    parts = [b.step(1, torch.Generator().manual_seed(0)) for b in halves]
    assert sum(len(p[0]) for p in parts) == 21 and sum(int((p[3] == 0.5).sum()) for p in parts) == 5


def test_mixup_and_cutmix_mix_images_and_targets(faces):
    real, _ = faces
    c = cfg(augment=AugmentConfig.off())
    x = preprocess(real.images, False)
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    for kind in ("mixup", "cutmix"):
        b = _Batches(c, x, real.labels, None, None, None, BatchMix(kind, 1.0), 0, 1, torch.device("cpu"))
        b.start_epoch(order, 0, 2)
        xb, yb, tb, wb = b.step(0, torch.Generator().manual_seed(0))
        assert tb.shape == (16, 7) and torch.allclose(tb.sum(1), torch.ones(16)) and wb is None
        assert not torch.equal(tb, F.one_hot(yb, 7).float())  # mixed targets
        assert not torch.equal(xb, x[order[:16]])  # mixed images
        assert (tb > 0).sum(1).max() == 2  # each face mixes with exactly one other
    with pytest.raises(ValueError, match="hard labels"):
        train_classifier(*real, *real, cfg(), targets=fake_teacher(real.images), batch_mix=BatchMix("mixup"))


def test_levers_enter_the_resume_fingerprint(faces, tmp_path):
    """A run killed as one arm must not resume as another with the same data and config."""
    real, synthetic = faces
    train_classifier(*real, *real, cfg(), checkpoint_dir=tmp_path, progress=False)
    shared = SharedSet(synthetic.images, synthetic.labels, 4)
    r = train_classifier(*real, *real, cfg(), checkpoint_dir=tmp_path, shared=shared, progress=False)
    assert len(r.history) == 2  # trained from scratch, not restored complete


def test_the_screen_chooses_on_val_and_ignores_test(tmp_path):
    abl = AblationConfig(controls=["distill", "mixup"], mixes=["hard-r0.5", "soft-s0.25"], screen_seed=100)
    rows = {"distill": (0.60, 0.90), "mixup": (0.62, 0.10), "hard-r0.5": (0.70, 0.20), "soft-s0.25": (0.65, 0.99)}
    for name, (val, test) in rows.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"arm": name, "seed": 100, "val_accuracy_tta": val,
                                                           "test": {"accuracy": test}}))
    screen = screen_results(tmp_path, abl)
    assert choose("control", screen, abl)["arm"] == "mixup" and choose("mix", screen, abl)["arm"] == "hard-r0.5"
    (tmp_path / "mixup.json").write_text(json.dumps({"arm": "mixup", "seed": 7, "val_accuracy_tta": 1, "test": {}}))
    from runtime.errors import UserError

    with pytest.raises(UserError, match="screen_seed"):
        screen_results(tmp_path, abl)


def test_confidence_band_rejects_the_most_prototypical_faces():
    p = torch.tensor([0.1, 0.4, 0.6, 0.9, 0.99])
    s = {"label_prob": p, "degenerate": torch.zeros(5, dtype=torch.bool), "memorized": torch.zeros(5, dtype=torch.bool),
         "duplicate": torch.zeros(5, dtype=torch.bool), "realism": torch.ones(5)}
    kept, reason = decide(FilterConfig(label_tau=0.3, label_tau_max=0.95, realism_tau=0), s)
    assert kept.tolist() == [False, True, True, True, False]
    assert reason == ["label_fidelity", "", "", "", "too_confident"]
    kept, _ = decide(FilterConfig(label_tau=0.3, realism_tau=0), s)  # default: no upper bound
    assert kept.tolist() == [False, True, True, True, True]


def test_coverage_selection_keeps_the_faces_that_cover_the_real_ones():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 8, generator=g)
    # candidates: 90 piled up around one real face (the 'prototypical' ones) and 10 spread over the real set
    piled = real[0] + 0.05 * torch.randn(90, 8, generator=g)
    spread = real[torch.randperm(200, generator=g)[:10]] + 0.05 * torch.randn(10, 8, generator=g)
    cands = torch.cat([piled, spread])
    picked = cover_real(real, cands, 10)
    assert len(picked) == 10 and len(set(picked.tolist())) == 10
    assert (picked >= 90).sum() >= 8  # the spread faces, not the pile

    def real_to_nearest(sel):
        return torch.cdist(real, cands[sel]).min(1).values.mean()

    assert real_to_nearest(picked) < real_to_nearest(torch.arange(10))  # covers better than 10 of the pile
    labels = torch.zeros(100, dtype=torch.int64)
    kept = torch.ones(100, dtype=torch.bool)
    kept2, reason = select_for_coverage(FilterConfig(selection="coverage", coverage_keep=0.1), labels, kept, [""] * 100,
                                        cands, real, torch.zeros(200, dtype=torch.int64))
    assert int(kept2.sum()) == 10 and reason.count("coverage") == 90 and set(picked.tolist()) == set(torch.nonzero(kept2).flatten().tolist())
    same, _ = select_for_coverage(FilterConfig(), labels, kept, [""] * 100, cands, real, torch.zeros(200, dtype=torch.int64))
    assert torch.equal(same, kept)  # selection: confidence leaves the kept set alone
