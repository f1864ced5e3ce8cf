"""Stage `filter`: score every synthetic face, drop the bad ones, and measure the set before and after.

Reads the generated set (data/synthetic), real train and test (data/prepared) and the judge.
Writes, each atomically:
  data/filtered/synthetic.safetensors   kept images, labels, seeds (the generate format)
  data/filtered/manifest.csv            one row per synthetic image: id, label, seed, every score,
                                        kept, and the first reason it was rejected
  data/filtered/manifest.json           thresholds, distance used, counts
  metrics/quality.json                  set-level metrics before and after filtering, rejections
                                        per filter and class
  plots/quality/kept_rejected.png       per expression: kept images, then rejected ones
  plots/quality/nearest_pairs.png       the synthetic faces closest to a real training face, each
                                        above its real neighbour
With `filter.cas_steps` > 0, quality.json also holds CAS (train on synthetic only, test on real)
before and after filtering on equal per-class counts (quality/cas.py).
Filters run in a fixed order and an image is charged to the first one it fails: degenerate,
memorization, unchanged (an edit of a real face too close to its source), duplicate, label_fidelity
(below label_tau), too_confident (above label_tau_max: a confidence band), realism; then, with
`selection: coverage`, each class's passing faces are cut to those that best cover the real faces.
For edits, memorization measures the distance to every training face except the edit's own source.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import save

from classifiers.judge import load_judge
from facedata.prepared import load_prepared
from facedata.synthetic import DATA_FILE, load_sources, load_synthetic
from figures.grids import contact_sheet, pairs_sheet
from quality import scores
from quality.cas import cas_before_after
from quality.config import FilterConfig
from quality.decisions import REASONS, decide, refill, select_for_coverage
from quality.neighbours import knn, without_own_source
from quality.perceptual import load_lpips
from quality.readings import inception_reference, quality_readings
from quality.scores import nearest_pixel_copy, nearest_real
from runtime import atomic
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS


def _manifest_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["id"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def run_filter(cfg: FilterConfig, data_dir: Path, synthetic_dir: Path, judge_path: Path,
               out_dir: Path = Path("data/filtered"), metrics_path: Path = Path("metrics/quality.json"),
               plots_dir: Path = Path("plots/quality")) -> dict:
    console = Console(stderr=True)
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:  # where the stage's time goes, into quality.json
        clock.append(time.perf_counter())
        seconds[name] = round(clock[-1] - clock[-2], 1)

    real = load_prepared(data_dir)
    (fake, seeds) = load_synthetic(synthetic_dir)
    sources = load_sources(synthetic_dir)  # edits of real faces: their source's index in real train
    judge = load_judge(judge_path)
    if cfg.judge_bf16 and judge.fast_inference_available():
        judge.use_channels_last()  # with bf16: 1.5-1.8x the faces/s of NCHW (benchmarks/bench_judge_features.py)
    if len(fake) == 0:
        raise UserError(f"{synthetic_dir}: the synthetic set is empty; check generate's counts in params.yaml")
    lpips_fn, distance = load_lpips(cfg.lpips)
    console.print(f"filter: {len(fake)} synthetic faces; memorization distance: {distance}")

    train, test = real["train"], real["test"]
    g = torch.Generator().manual_seed(cfg.seed)
    ref = torch.randperm(len(train), generator=g)[: cfg.max_real_for_metrics]
    calib = torch.randperm(len(test), generator=g)[:2000]  # real test faces that calibrate memorization
    train_feats = judge.features(train.images, fast=cfg.judge_bf16)
    test_feats = judge.features(test.images[calib], fast=cfg.judge_bf16)
    fake_feats, probs = judge.features_and_probabilities(fake.images, fast=cfg.judge_bf16)
    lap("load_and_judge_features")

    s: dict[str, torch.Tensor] = {
        "label_prob": scores.label_fidelity(probs, fake.labels),
        "judge_pred": probs.argmax(1),
        "realism": scores.realism(fake_feats, train_feats[ref], cfg.realism_k, cfg.realism_keep_radii),
        "degenerate": scores.degenerate(fake.images, cfg.min_std, cfg.max_saturated),
    }
    lap("realism_and_degenerate")
    # one feature-space shortlist of training faces per query set serves every memorization check
    if sources is None:
        fake_short = knn(fake_feats, train_feats, k=cfg.lpips_top_k)
    else:  # an edit is near its own source by design: memorization asks about every other training face
        fake_short = without_own_source(knn(fake_feats, train_feats, k=cfg.lpips_top_k + 1), sources)
    test_short = knn(test_feats, train_feats, k=cfg.lpips_top_k)
    s["nn_real_dist"], s["nn_real_index"] = nearest_real(fake_short, fake.images, train.images, lpips_fn)
    # test faces whose very pixels occur in train (FER2013 has such cross-split duplicates) are copies,
    # not strangers: they are left out of the calibration. Found in pixels: in float32 feature space
    # an identical pair can sit ~1e-2 apart, so a distance of ~0 does not find them all.
    exact = scores.exact_copies(test.images[calib], train.images, test_short[1])
    feature_nn = test_short[0][:, 0]
    feature_threshold = scores.memorization_threshold(feature_nn[~exact], cfg.memorization_quantile)
    threshold, test_nn = feature_threshold, feature_nn
    if lpips_fn is not None:  # memorization in LPIPS, calibrated in LPIPS
        test_nn, _ = nearest_real(test_short, test.images[calib], train.images, lpips_fn)
        threshold = scores.memorization_threshold(test_nn[~exact], cfg.memorization_quantile)
    s["memorized"] = s["nn_real_dist"] < threshold
    test_memorized = test_nn < threshold
    lap("memorization_shortlist")
    pixel_threshold = None
    if cfg.pixel_copies:  # the same test in pixels, shift-tolerant, calibrated the same way
        s["nn_pixel_dist"] = nearest_pixel_copy(fake_short[1], fake.images, train.images, cfg.pixel_max_shift)
        test_pixel = nearest_pixel_copy(test_short[1], test.images[calib], train.images, cfg.pixel_max_shift)
        pixel_threshold = scores.memorization_threshold(test_pixel[~exact], cfg.memorization_quantile)
        s["memorized"] |= s["nn_pixel_dist"] < pixel_threshold
        test_memorized |= test_pixel < pixel_threshold
        lap("memorization_pixels")
    # what the memorization filter does to real strangers: its false-rejection rate on real test
    # faces (exact cross-split duplicates, which really are copies, counted apart)
    false_rejection = {"real_test_faces": len(test_nn), "exact_copies_in_train": int(exact.sum()),
                       "rejected_excluding_exact_copies": round(float(test_memorized[~exact].double().mean()), 4)}
    s["duplicate"], s["nn_synthetic_dist"] = scores.near_duplicates(fake_feats, feature_threshold)
    if sources is not None:
        s["source_dist"], s["unchanged"] = scores.edit_change(fake.images, train.images, sources, cfg.edit_min_change)

    kept, reason = decide(cfg, s)
    kept, reason, warnings = refill(cfg, fake.labels, kept, reason, s["label_prob"])
    kept, reason = select_for_coverage(cfg, fake.labels, kept, reason, fake_feats, train_feats, train.labels)
    for msg in warnings.values():
        console.print(f"[yellow]warning:[/] {msg}")
    kept_set = fake.subset(torch.nonzero(kept).flatten())
    lap("duplicates_and_decisions")

    col = {k: v.tolist() for k, v in s.items()}  # plain lists: no tensor indexing per row
    if sources is not None:
        col["sources"] = sources.tolist()
    labels, seed_list, kept_list = fake.labels.tolist(), seeds.tolist(), kept.tolist()
    rows = [{"id": i, "label": labels[i], "expression": EXPRESSIONS[labels[i]], "seed": seed_list[i],
             "label_prob": round(col["label_prob"][i], 5), "judge_pred": EXPRESSIONS[col["judge_pred"][i]],
             "realism": round(col["realism"][i], 5), "nn_real_dist": round(col["nn_real_dist"][i], 5),
             "nn_real_index": col["nn_real_index"][i],
             "nn_pixel_dist": round(col["nn_pixel_dist"][i], 5) if "nn_pixel_dist" in col else "",
             "nn_synthetic_dist": round(col["nn_synthetic_dist"][i], 5),
             "degenerate": col["degenerate"][i], "kept": kept_list[i], "reason": reason[i],
             **({"source": col["sources"][i], "source_dist": round(col["source_dist"][i], 5)} if sources is not None else {})}
            for i in range(len(fake))]
    rejected = {name: {e: 0 for e in EXPRESSIONS} for name in REASONS}
    for r in rows:
        if not r["kept"]:
            rejected[r["reason"]][r["expression"]] += 1

    console.print("filter: measuring the set before and after filtering")
    # before and after measured on equally many synthetic faces, so coverage and recall compare
    n_measured = max(1, min(int(kept.sum()), cfg.max_real_for_metrics))
    before = quality_readings(train, train_feats, fake, fake_feats, probs, cfg, lpips_fn, max_fake=n_measured)
    after = quality_readings(train, train_feats, kept_set, fake_feats[kept], probs[kept], cfg, lpips_fn,
                             max_fake=n_measured)
    lap("set_metrics_before_after")
    inception, inception_note = inception_reference(cfg, train)
    console.print(f"filter: {inception_note}")
    if inception is not None:
        before["inception"] = inception.compare(fake.images, fake.labels)
        after["inception"] = inception.compare(kept_set.images, kept_set.labels)
    lap("inception_before_after")
    cas = None
    if cfg.cas_steps:  # train on synthetic only, before and after filtering, equal per-class counts
        cas = cas_before_after(judge.cfg, cfg.cas_steps, cfg.cas_rounds, cfg.seed, fake, kept, real, console)
        lap("cas_before_after")
    per_class_kept = {e: int((kept & (fake.labels == c)).sum()) for c, e in enumerate(EXPRESSIONS)}
    per_class_total = {e: int((fake.labels == c).sum()) for c, e in enumerate(EXPRESSIONS)}
    quality = {
        "feature_space": "judge penultimate features",
        "inception_features": inception_note,
        "memorization_distance": distance,
        "memorization_threshold": round(threshold, 6),
        "pixel_copy_threshold": round(pixel_threshold, 6) if pixel_threshold is not None else None,
        "memorization_calibration": f"{cfg.memorization_quantile} quantile of real test -> real train nearest distances (exact copies excluded)",
        "n_generated": len(fake), "n_kept": int(kept.sum()), "kept_fraction": round(float(kept.double().mean()), 4),
        "kept_per_class": per_class_kept, "generated_per_class": per_class_total,
        "rejected": {k: {"total": sum(v.values()), **v} for k, v in rejected.items()},
        "copies_of_training_faces": int(sum(rejected["memorization"].values())),
        "memorization_false_rejection_on_real_test": false_rejection,
        "warnings": warnings,
        "seconds": seconds,
        "before": before, "after": after,
        "cas": cas if cas is not None else "off (filter.cas_steps: 0); the ablation's synthetic_only arm measures CAS",
        "config": cfg.to_dict(),
    }
    summary = {k: quality[k] for k in ("n_generated", "n_kept", "kept_per_class", "memorization_threshold",
                                       "memorization_distance", "rejected")}
    with atomic.atomic_dir(out_dir) as tmp:
        extra = {"sources": sources[kept].contiguous()} if sources is not None else {}
        (tmp / DATA_FILE).write_bytes(save({"images": kept_set.images.contiguous(), "labels": kept_set.labels.contiguous(),
                                            "seeds": seeds[kept].contiguous(), **extra}))  # not save_file: it writes 0600
        (tmp / "manifest.csv").write_text(_manifest_csv(rows))
        atomic.write_json(tmp / "manifest.json", {**summary, "source": str(synthetic_dir), "config": quality["config"]})
    contact_sheet(fake.images, fake.labels, kept, cfg.contact_per_class, plots_dir / "kept_rejected.png")
    closest = torch.argsort(s["nn_real_dist"])[:16]
    pairs_sheet(fake.images[closest], train.images[s["nn_real_index"][closest]], plots_dir / "nearest_pairs.png")
    atomic.write_json(metrics_path, quality)
    console.print(f"filter: kept {quality['n_kept']}/{len(fake)}; GAN-test {before.get('gan_test', {}).get('overall')} -> "
                  f"{after.get('gan_test', {}).get('overall')}; precision {before.get('precision')} -> {after.get('precision')}, "
                  f"coverage {before.get('coverage')} -> {after.get('coverage')}")
    return quality
