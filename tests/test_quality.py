"""Quality metrics against reference implementations on identical inputs, and the per-image scores."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from quality import scores
from quality.neighbours import knn, kth_radius
from quality.set_metrics import density_coverage, fid, precision_recall, set_metrics


def gaussian_sets(n=400, d=16, shift=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, d, generator=g)
    fake = torch.randn(n, d, generator=g) * 1.2 + shift
    return real, fake


@pytest.mark.parametrize("n, m, d", [(400, 400, 16), (40, 30, 64)], ids=["more images than dims", "fewer (nuclear norm)"])
def test_fid_matches_the_scipy_sqrtm_formula(n, m, d):
    real, fake = gaussian_sets(n=max(n, m), d=d)
    real, fake = real[:n], fake[:m]
    a, b = real.double().numpy(), fake.double().numpy()
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    reference = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert fid(real, fake) == pytest.approx(reference, rel=1e-6)
    assert fid(real, real) == pytest.approx(0.0, abs=1e-6)
    assert fid(fake, real) == pytest.approx(reference, rel=1e-6)


def test_kid_matches_torchmetrics_on_the_same_features():
    from torchmetrics.image.kid import KernelInceptionDistance

    from quality.probe import kid

    real, fake = gaussian_sets(n=300)

    class Features(torch.nn.Module):  # torchmetrics runs its metric on whatever the extractor returns
        def forward(self, x):
            return x.flatten(1)[:, :16].double()

    metric = KernelInceptionDistance(feature=Features(), subsets=1, subset_size=300, normalize=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    reference, _ = metric.compute()
    assert kid(real, fake, subsets=1, subset_size=300) == pytest.approx(float(reference), rel=1e-5)


def test_precision_recall_density_coverage_match_prdc():
    from prdc import compute_prdc

    real, fake = gaussian_sets(n=300, shift=0.3)
    ref = compute_prdc(real_features=real.numpy(), fake_features=fake.numpy(), nearest_k=5)
    ours = {**precision_recall(real, fake, k=5), **density_coverage(real, fake, k=5)}
    for key in ("precision", "recall", "density", "coverage"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key


def test_metrics_react_the_right_way():
    real, _ = gaussian_sets()
    near, _ = gaussian_sets(seed=1)
    far = near + 3
    assert fid(real, near) < fid(real, far)
    assert precision_recall(real, near)["precision"] > 0.6 > 0.1 > precision_recall(real, far)["precision"]
    collapsed = near[:1].repeat(400, 1) + 0.01 * torch.randn(400, 16)  # mode collapse: precise, no coverage
    dc = density_coverage(real, collapsed)
    assert dc["coverage"] < 0.1 < density_coverage(real, near)["coverage"]
    labels = torch.arange(400) % 7
    out = set_metrics(real, labels, near, labels, kid_subset=50)
    assert set(out["per_class"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert "kid" in out["per_class"]["disgust"]


def test_synthetic_sets_compared_at_one_size_because_coverage_grows_with_samples():
    """The filter measures before and after at the same max_fake: the same distribution measured
    with more samples scores a higher coverage and recall, which would flatter the unfiltered set."""
    real, _ = gaussian_sets()
    labels = torch.arange(2000) % 7
    more = torch.cat([gaussian_sets(seed=s)[0] for s in range(1, 6)])  # 2,000 faces from real's distribution
    full = set_metrics(real, labels[:400], more, labels, kid_subset=50)
    capped = set_metrics(real, labels[:400], more, labels, kid_subset=50, max_fake=200)
    assert full["n_synthetic_measured"] == 2000 and capped["n_synthetic_measured"] == 200 == sum(
        row["n_synthetic"] for row in capped["per_class"].values())
    assert full["coverage"] > capped["coverage"] + 0.05 and full["recall"] > capped["recall"]


def test_chunked_knn_matches_brute_force():
    a, b = torch.randn(50, 8), torch.randn(70, 8)
    d, i = knn(a, b, k=3, chunk=7)
    full = torch.cdist(a, b)
    ref_d, ref_i = torch.topk(full, 3, largest=False)
    assert torch.allclose(d, ref_d) and torch.equal(i, ref_i)
    r = kth_radius(a, 2)
    self_d = torch.cdist(a, a) + torch.eye(50) * 1e9
    assert torch.allclose(r, torch.topk(self_d, 2, largest=False).values[:, -1])


def test_per_image_scores():
    real, _ = gaussian_sets(d=2)  # 2-D: the dense middle of the real cloud lies inside many balls
    inside, outside = 0.05 * torch.randn(5, 2), real[:5] + 50
    realism = scores.realism(torch.cat([inside, outside]), real, k=3)
    assert bool((realism[:5] > 1).all()) and bool((realism[5:] < 0.2).all())

    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    assert scores.label_fidelity(probs, torch.tensor([0, 0])).tolist() == pytest.approx([0.9, 0.3])

    with_copies = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    assert scores.memorization_threshold(with_copies, 0.0) == pytest.approx(1.0)  # exact copies left out

    feats = torch.tensor([[0.0, 0.0], [0.001, 0.0], [5.0, 5.0], [5.0, 5.001], [9.0, 0.0]])
    dup, nearest = scores.near_duplicates(feats, threshold=0.01)
    assert dup.tolist() == [False, True, False, True, False]  # the later one of each close pair goes
    assert nearest[4] > 1

    images = torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8)
    images[1] = 128  # flat
    images[2] = 255  # saturated
    assert scores.degenerate(images, min_std=4, max_saturated=0.5).tolist() == [False, True, True, False]


def test_pixel_copy_distance_sees_through_shift_light_and_noise_but_not_other_faces():
    from facedata.sources.demo_faces import draw_demo_faces

    faces = draw_demo_faces([4] * 7, seed=3)[0]
    a, other = faces[:10], faces[10:20]
    g = torch.Generator().manual_seed(0)
    relit = (a.float() * 0.7 + 40).to(torch.uint8)
    shifted = torch.roll(a, shifts=(2, -1), dims=(2, 3))
    noisy = (a.float() + 3 * torch.randn(a.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    assert scores.pixel_copy_distance(a, a).max() < 1e-5
    assert scores.pixel_copy_distance(relit, a).max() < 0.05
    assert scores.pixel_copy_distance(shifted, a).max() < 0.2  # only the rolled-in border differs
    assert scores.pixel_copy_distance(noisy, a).max() < 0.3
    assert scores.pixel_copy_distance(a, other).min() > 0.4


@pytest.mark.parametrize("max_shift", [0, 1, 2, 3])
def test_fast_pixel_copy_distance_equals_the_one_pass_per_shift_reference(max_shift):
    g = torch.Generator().manual_seed(max_shift)
    a = torch.randint(0, 256, (120, 1, 48, 48), dtype=torch.uint8, generator=g)
    b = a[torch.randperm(120, generator=g)]
    b[:40] = torch.roll(a[:40], shifts=(1, -2), dims=(2, 3))  # shifted copies: the best shift is not 0
    b[40:60] = a[40:60]
    fast, ref = scores.pixel_copy_distance(a, b, max_shift), scores.pixel_copy_distance_reference(a, b, max_shift)
    assert torch.allclose(fast, ref, atol=1e-5)
    assert fast[40:60].max() == 0  # exact copies stay exactly 0 despite the |c|^2 + |w|^2 - 2cw expansion
    assert len(scores.pixel_copy_distance(a[:0], b[:0], max_shift)) == 0


def test_near_duplicates_match_a_brute_force_greedy_even_in_crowded_clusters():
    """Clusters of 15 near-identical points: more close neighbours than any top-k shortlist would hold."""
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(20, 8, generator=g)
    feats = (centres.repeat_interleave(15, 0) + 0.01 * torch.randn(300, 8, generator=g))
    feats = torch.cat([feats, 10 * torch.randn(100, 8, generator=g)])[torch.randperm(400, generator=g)]
    candidates = torch.rand(400, generator=g) > 0.2
    dup, nearest = scores.near_duplicates(feats, threshold=0.1, candidates=candidates, chunk=64)
    d = torch.cdist(feats, feats).fill_diagonal_(float("inf"))
    expected = torch.zeros(400, dtype=torch.bool)
    for j in range(400):  # the definition, one image at a time
        earlier = torch.arange(j)[(d[j, :j] < 0.1)]
        expected[j] = bool(candidates[j]) and bool((candidates[earlier] & ~expected[earlier]).any())
    assert torch.equal(dup, expected) and int(dup.sum()) > 200
    assert torch.allclose(nearest, d.min(1).values, atol=2e-2)  # float32 |a|^2 + |b|^2 - 2ab, as in cdist


def test_exact_copies_are_found_in_pixels_among_the_shortlist():
    from facedata.sources.demo_faces import draw_demo_faces

    faces = draw_demo_faces([3] * 7, seed=2)[0]
    reference, query = faces[:15], torch.cat([faces[3:5], faces[15:18]])
    shortlist = torch.tensor([[0, 3], [4, 1], [0, 1], [2, 5], [6, 7]])
    assert scores.exact_copies(query, reference, shortlist).tolist() == [True, True, False, False, False]
    assert scores.exact_copies(query[:0], reference, shortlist[:0]).shape == (0,)


def test_filter_decisions_charge_the_first_failed_filter_and_respect_switches():
    from quality.config import FilterConfig
    from quality.decisions import decide

    s = {"degenerate": torch.tensor([True, False, False, False, False]),
         "memorized": torch.tensor([True, True, False, False, False]),
         "duplicate": torch.tensor([False, False, True, False, False]),
         "label_prob": torch.tensor([0.9, 0.9, 0.9, 0.2, 0.9]),
         "realism": torch.tensor([2.0, 2.0, 2.0, 2.0, 0.1])}
    kept, reason = decide(FilterConfig(label_tau=0.5, realism_tau=0.7), s)
    assert reason == ["degenerate", "memorization", "duplicate", "label_fidelity", "realism"]
    assert not kept.any()
    kept, reason = decide(FilterConfig(degenerate=False, label_fidelity=False, realism=False), s)
    assert reason == ["memorization", "memorization", "duplicate", "", ""] and kept.tolist() == [0, 0, 0, 1, 1]


def test_refill_readmits_only_soft_rejects_best_first_and_leaves_its_inputs_alone():
    from quality.config import FilterConfig
    from quality.decisions import refill

    labels = torch.zeros(10, dtype=torch.long)  # ten angry faces, none kept
    kept = torch.zeros(10, dtype=torch.bool)
    reason = ["memorization", "duplicate", "degenerate"] + ["label_fidelity"] * 5 + ["realism"] * 2
    prob = torch.tensor([0.99, 0.98, 0.97, 0.1, 0.4, 0.3, 0.2, 0.05, 0.35, 0.01])
    new_kept, new_reason, warnings = refill(FilterConfig(min_keep_fraction=0.3, refill=True), labels, kept, reason, prob)
    assert torch.nonzero(new_kept).flatten().tolist() == [4, 5, 8]  # the 3 best soft rejects: p 0.4, 0.35, 0.3
    assert all(new_reason[i].startswith("refilled (") for i in (4, 5, 8)) and new_reason[0] == "memorization"
    assert not kept.any() and reason[4] == "label_fidelity"  # inputs untouched
    assert "angry" in warnings and "re-admitted 3" in warnings["angry"]
    only_warn, _, w = refill(FilterConfig(min_keep_fraction=0.3, refill=False), labels, kept, reason, prob)
    assert not only_warn.any() and "re-admitted" not in w["angry"]
