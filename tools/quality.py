"""`fersynth quality`: set-level metrics of any synthetic set against real faces, printed as a table.

Either side may be a fersynth folder (prepared data: its train split; a generated or filtered set) or a
plain image folder made anywhere (`<class>/<image>` or a Hugging Face imagefolder with metadata.csv), read
exactly as `prepare` reads image folders, so two folders compare as `fidelity --input1 --input2` does."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from classifiers.judge import load_judge
from facedata.prepared import LabelledImages, load_split
from facedata.sources.image_folder import read_labelled_folder
from facedata.synthetic import DATA_FILE, load_synthetic
from quality.config import FilterConfig
from quality.perceptual import load_lpips
from quality.readings import inception_reference, quality_readings
from runtime import atomic
from runtime.labels import EXPRESSIONS

METRIC_NOTES = {
    "fid": "Frechet distance of judge features (lower = closer to real)",
    "kid": "kernel distance of judge features, unbiased (lower = closer; ~0 = same distribution)",
    "precision": "share of synthetic faces inside the real manifold (realism)",
    "recall": "share of real faces inside the synthetic manifold (variety)",
    "density": "how densely synthetic faces sit among real ones (1 ~ like real)",
    "coverage": "share of real neighbourhoods holding a synthetic face (drops if only easy faces are kept)",
}


def independent_gan_test(classifier_path: Path, images, labels) -> dict:
    """GAN-test by a classifier the generator never saw (the judge guides the GAN, so its own
    GAN-test flatters it): e.g. a model from `train-classifier`."""
    from classifiers.saved_model import load_classifier
    from classifiers.training import predict_proba
    from quality.probe import gan_test

    if not Path(classifier_path).is_file():
        from runtime.errors import UserError

        raise UserError(f"{classifier_path}: classifier not found; pass a model.safetensors from train-classifier")
    model, clf_cfg, _ = load_classifier(classifier_path)
    return gan_test(predict_proba(model, images, clf_cfg), labels)


def load_faces(path: Path, what: str, class_map: dict[str, str] | None = None, lenient: bool = False) -> LabelledImages:
    """Labelled faces from prepared data (its train split), a fersynth synthetic set, or any image folder."""
    path = Path(path)
    if (path / "train.safetensors").is_file():
        return load_split(path / "train.safetensors")
    if (path / DATA_FILE).is_file():
        return load_synthetic(path)[0]
    folder = read_labelled_folder(path, class_map, lenient, what=what)
    return LabelledImages(folder.images, folder.labels)


def run_quality(cfg: FilterConfig, data_dir: Path, synthetic_dir: Path, judge_path: Path, out: Path | None,
                classifier: Path | None = None, class_map: dict[str, str] | None = None, lenient: bool = False) -> dict:
    judge = load_judge(judge_path)
    train = load_faces(data_dir, "real faces (--real)", class_map, lenient)
    fake = load_faces(synthetic_dir, "synthetic faces (--synthetic)", class_map, lenient)
    lpips_fn, distance = load_lpips(cfg.lpips)
    inception, inception_note = inception_reference(cfg, train)
    fake_feats, probs = judge.features_and_probabilities(fake.images)
    metrics = quality_readings(train, judge.features(train.images), fake, fake_feats, probs, cfg, lpips_fn)
    if inception is not None:
        metrics["inception"] = inception.compare(fake.images, fake.labels)
    metrics["diversity_distance"] = distance
    metrics["inception_features"] = inception_note
    if classifier is not None:
        metrics["gan_test_independent"] = {"classifier": str(classifier), **independent_gan_test(classifier, fake.images, fake.labels)}
    table = Table(title=f"quality of {synthetic_dir} ({metrics['n_synthetic']} images) vs {data_dir} ({metrics['n_real']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    for key, note in METRIC_NOTES.items():
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.4g}", note)
    if "fid" in metrics.get("inception", {}):
        inc = metrics["inception"]
        table.add_row("FID (Inception)", f"{inc['fid']:.4g}", f"standard FID, {inc['n_synthetic']} vs {inc['n_real']} faces")
        table.add_row("KID (Inception)", f"{inc['kid']:.4g}", "unbiased; comparable across sample sizes")
    else:
        table.add_row("Inception", "-", inception_note)
    if "gan_test" in metrics:
        table.add_row("GAN-test", f"{metrics['gan_test']['overall']:.3f}", "judge agrees with the conditioning label")
        for name in EXPRESSIONS:
            if name in metrics["gan_test"]["per_class"]:
                table.add_row(f"  {name}", f"{metrics['gan_test']['per_class'][name]:.3f}", "")
    if "gan_test_independent" in metrics:
        ind = metrics["gan_test_independent"]
        table.add_row("GAN-test (independent)", f"{ind['overall']:.3f}", f"agreement of {classifier}")
        for name in EXPRESSIONS:
            if name in ind["per_class"]:
                table.add_row(f"  {name}", f"{ind['per_class'][name]:.3f}", "")
    Console().print(table)
    if out is not None:
        atomic.write_json(out, metrics)
    return metrics
