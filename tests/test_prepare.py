"""Ingestion: every source, every bad-input case (strict and lenient), splits, subsets, dedupe, determinism."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from facedata.prepared import load_manifest, load_prepared
from pipelines.cli import app
from pipelines.prepare import resolve_data_path
from tests.conftest import FER2013, needs_fer2013, write_fer_csv, write_params

runner = CliRunner()
OFFICIAL = {  # ../shared/data/fer2013/README.md
    "train": [3995, 436, 4097, 7215, 4830, 3171, 4965],
    "val": [467, 56, 496, 895, 653, 415, 607],
    "test": [491, 55, 528, 879, 594, 416, 626],
}


def prepare(tmp_path: Path, *extra: str, **data):
    params = write_params(tmp_path / "params.yaml", **data)
    out = tmp_path / "prepared"
    result = runner.invoke(app, ["prepare", "--params", str(params), "--out", str(out), *extra])
    return result, out


def assert_user_error(result, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists(), "a failed prepare must write nothing"


# ---------------------------------------------------------------- FER2013 CSV layouts


def test_fer2013_csv_slice(tmp_path, fer_rows):
    csv = write_fer_csv(tmp_path / "fer.csv", fer_rows)
    result, out = prepare(tmp_path, source="fer2013", path=str(csv))
    assert result.exit_code == 0, result.output
    data = load_prepared(out)
    assert [len(data[s]) for s in ("train", "val", "test")] == [140, 42, 42]
    first_pixels = np.array(fer_rows["Training"][0][1].split(), dtype=np.uint8)
    assert torch.equal(data["train"].images[0, 0].flatten(), torch.from_numpy(first_pixels))
    assert data["train"].labels[0] == int(fer_rows["Training"][0][0])
    manifest = load_manifest(out)
    assert manifest["counts"]["val"]["disgust"] == 6
    assert set(manifest["files"]) == {"train.safetensors", "val.safetensors", "test.safetensors"}


def test_gzipped_csv_equals_plain(tmp_path, fer_rows):
    csv = write_fer_csv(tmp_path / "fer.csv", fer_rows)
    gz = tmp_path / "fer.csv.gz"
    gz.write_bytes(gzip.compress(csv.read_bytes()))
    _, out_plain = prepare(tmp_path / "a", source="fer2013", path=str(csv)) if (tmp_path / "a").mkdir() is None else None
    _, out_gz = prepare(tmp_path / "b", source="fer2013", path=str(gz)) if (tmp_path / "b").mkdir() is None else None
    for split in ("train", "val", "test"):
        assert (out_plain / f"{split}.safetensors").read_bytes() == (out_gz / f"{split}.safetensors").read_bytes()


def test_relative_data_path_inside_a_queued_experiment(tmp_path, fer_rows, monkeypatch):
    """`dvc exp run --queue` runs in <project>/.dvc/tmp/exps/<tmp>/: a relative data.path means <project>/path."""
    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    write_fer_csv(tmp_path / "shared" / "fer.csv", fer_rows)
    assert resolve_data_path("../shared/fer.csv", cwd=copy).resolve() == (tmp_path / "shared" / "fer.csv").resolve()
    assert resolve_data_path("../shared/fer.csv", cwd=project) == Path("../shared/fer.csv"), "plain runs: as given"
    write_fer_csv(copy / "here.csv", fer_rows)
    monkeypatch.chdir(copy)
    assert resolve_data_path("here.csv") == Path("here.csv"), "a path that exists where we run wins"
    result, out = prepare(copy, source="fer2013", path="../shared/fer.csv")
    assert result.exit_code == 0, result.output
    assert len(load_prepared(out)["train"]) == 140
    result, out = prepare(copy / "x", source="fer2013", path="../nowhere/fer.csv") if (copy / "x").mkdir() is None else None
    assert_user_error(result, out, "nowhere/fer.csv", "FER2013 CSV not found; put your copy there")


def test_icml_face_data_layout(tmp_path, fer_rows):
    csv = write_fer_csv(tmp_path / "icml_face_data.csv", fer_rows, header="emotion, Usage, pixels")
    result, out = prepare(tmp_path, source="fer2013", path=str(csv))
    assert result.exit_code == 0, result.output
    assert load_manifest(out)["totals"] == {"train": 140, "val": 42, "test": 42}


def test_kaggle_train_csv_is_split_stratified(tmp_path, fer_rows):
    rows = {"Training": fer_rows["Training"]}
    csv = write_fer_csv(tmp_path / "train.csv", rows, header="emotion,pixels")
    result, out = prepare(tmp_path, source="fer2013", path=str(csv), val_fraction=0.1, test_fraction=0.2)
    assert result.exit_code == 0, result.output
    counts = load_manifest(out)["counts"]
    assert all(counts["val"][c] == 2 and counts["test"][c] == 4 and counts["train"][c] == 14 for c in counts["val"])


def test_kaggle_test_csv_has_no_labels(tmp_path, fer_rows):
    csv = tmp_path / "test.csv"
    csv.write_text("pixels\n" + "\n".join(p for _, p in fer_rows["PrivateTest"][:5]) + "\n")
    result, out = prepare(tmp_path, source="fer2013", path=str(csv))
    assert_user_error(result, out, "test.csv", "no labels")


@needs_fer2013
@pytest.mark.slow
def test_full_fer2013_matches_official_table(tmp_path):
    result, out = prepare(tmp_path, source="fer2013", path=str(FER2013))
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    for split, expected in OFFICIAL.items():
        assert list(manifest["counts"][split].values()) == expected
    assert manifest["duplicates"]["arrays_in_more_than_one_split"] == 557
    assert manifest["duplicates"]["distinct_arrays"] == 34034
    assert manifest["source"]["sha256"] == "0bb6b22897e4c8af2b2d6b5240c2093c23ef7d0d5a9e228210c7315f96b895fd"
    # dedupe removes exactly the train images whose pixels also occur in val or test
    result, out2 = prepare(tmp_path / "d", source="fer2013", path=str(FER2013), dedupe=True) if (tmp_path / "d").mkdir() is None else None
    m2 = load_manifest(out2)
    removed = m2["duplicates"]["removed_from_train"]
    assert removed > 0 and m2["totals"]["train"] == 28709 - removed
    data = load_prepared(out2)
    train_rows = {bytes(r) for r in data["train"].images.reshape(len(data["train"]), -1).numpy()}
    held_out = {bytes(r) for s in ("val", "test") for r in data[s].images.reshape(len(data[s]), -1).numpy()}
    assert not train_rows & held_out


# ---------------------------------------------------------------- subsets, dedupe, determinism


def test_real_fraction_is_nested_and_stratified(tmp_path):
    outs = {}
    for f in (0.1, 0.25, 1.0):
        d = tmp_path / str(f)
        d.mkdir()
        result, outs[f] = prepare(d, source="demo", real_fraction=f, demo_per_class=[40, 20, 40, 40, 40, 40, 40])
        assert result.exit_code == 0, result.output
    rows = {f: {bytes(r) for r in load_prepared(o)["train"].images.reshape(-1, 2304).numpy()} for f, o in outs.items()}
    assert rows[0.1] < rows[0.25] < rows[1.0]
    full = load_manifest(outs[1.0])["counts"]["train"]
    tenth = load_manifest(outs[0.1])["counts"]["train"]
    assert all(tenth[c] == -(-full[c] // 10) for c in full)  # ceil(0.1 * n) per class
    # val and test do not change with the fraction
    assert load_manifest(outs[0.1])["files"]["test.safetensors"] == load_manifest(outs[1.0])["files"]["test.safetensors"]


def test_dedupe_removes_train_copies_of_test_images(tmp_path, fer_rows):
    rows = {k: list(v) for k, v in fer_rows.items()}
    rows["Training"] += [rows["PrivateTest"][0], rows["PublicTest"][1], rows["Training"][3]]
    csv = write_fer_csv(tmp_path / "fer.csv", rows)
    result, out = prepare(tmp_path, source="fer2013", path=str(csv))
    dup = load_manifest(out)["duplicates"]
    assert dup["across_splits"]["train-test"] == 1 and dup["across_splits"]["train-val"] == 1
    assert dup["within_split"]["train"]["redundant_copies"] == 1
    assert dup["removed_from_train"] == 0
    (tmp_path / "d").mkdir()
    result, out = prepare(tmp_path / "d", source="fer2013", path=str(csv), dedupe=True)
    m = load_manifest(out)
    assert m["duplicates"]["removed_from_train"] == 2  # the copies of val/test faces; a within-train repeat stays
    assert m["totals"]["train"] == 143 - 2


def test_same_params_give_byte_identical_files(tmp_path):
    hashes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        result, out = prepare(tmp_path / name, source="demo", demo_per_class=[30] * 7)
        assert result.exit_code == 0, result.output
        hashes.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert hashes[0] == hashes[1]


# ---------------------------------------------------------------- image folders


def _save_faces(folder: Path, rows: list[tuple[str, str]], rgb: bool = False, size: int = 48) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (_, pixels) in enumerate(rows):
        img = Image.fromarray(np.array(pixels.split(), dtype=np.uint8).reshape(48, 48))
        if size != 48:
            img = img.resize((size, size))
        if rgb:
            img = img.convert("RGB")
        img.save(folder / f"{i:04d}.{'jpg' if rgb else 'png'}")


def _by_class(rows):
    out: dict[int, list] = {}
    for emotion, pixels in rows:
        out.setdefault(int(emotion), []).append((emotion, pixels))
    return out


FOLDER_NAMES = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]


def test_image_folder_with_splits_and_mapping(tmp_path, fer_rows):
    root = tmp_path / "rafdb"
    for split, usage in (("train", "Training"), ("test", "PrivateTest")):
        for label, rows in _by_class(fer_rows[usage]).items():
            _save_faces(root / split / FOLDER_NAMES[label], rows, rgb=(label % 2 == 0), size=64 if label == 3 else 48)
    _save_faces(root / "train" / "contempt", fer_rows["Training"][:5])
    (tmp_path / "p").mkdir()
    params = write_params(tmp_path / "p" / "params.yaml", source="image_folder", path=str(root), val_fraction=0.1)
    out = tmp_path / "prepared"
    result = runner.invoke(app, ["prepare", "--params", str(params), "--out", str(out)])
    assert result.exit_code == 0, result.output
    m = load_manifest(out)
    assert m["classes_dropped"] == {"contempt": 5}
    assert m["totals"]["test"] == 42 and m["totals"]["train"] + m["totals"]["val"] == 140
    assert m["counts"]["val"]["happy"] == 2  # carved from train, stratified
    # a grayscale PNG at 48x48 comes through bit-exact
    data = load_prepared(out)
    assert data["test"].images.dtype == torch.uint8 and data["test"].images.shape[1:] == (1, 48, 48)


def test_flat_image_folder_with_custom_class_map(tmp_path, fer_rows):
    root = tmp_path / "ckplus"
    raf_names = {0: "6", 1: "3", 2: "2", 3: "4", 4: "5", 5: "1", 6: "7"}  # RAF-DB's numeric folders
    for label, rows in _by_class(fer_rows["Training"]).items():
        _save_faces(root / raf_names[label], rows)
    class_map = {"1": "surprise", "2": "fear", "3": "disgust", "4": "happy", "5": "sad", "6": "angry", "7": "neutral"}
    result, out = prepare(tmp_path, source="image_folder", path=str(root), class_map=class_map,
                          val_fraction=0.1, test_fraction=0.1)
    assert result.exit_code == 0, result.output
    m = load_manifest(out)
    assert m["counts"]["train"]["surprise"] == 16 and m["counts"]["test"]["angry"] == 2


# ---------------------------------------------------------------- bad input, strict and lenient

GOOD = "0," + " ".join(["7"] * 2304) + ",Training"


def _csv_with(tmp_path: Path, bad_line: str, fer_rows) -> Path:
    csv = write_fer_csv(tmp_path / "fer.csv", fer_rows)
    lines = csv.read_text().splitlines()
    lines.insert(5, bad_line)  # becomes line 6 of the file
    csv.write_text("\n".join(lines) + "\n")
    return csv


BAD_ROWS = {
    "bad_pixel_count": ("0," + " ".join(["7"] * 2303) + ",Training", "2303 pixel values"),
    "bad_pixel_value": ("0," + " ".join(["7"] * 2303) + " 1.5,Training", "not an integer"),
    "bad_pixel_range": ("0," + " ".join(["7"] * 2303) + " 256,Training", "out of range"),
    "bad_label": (GOOD.replace("0,", "9,", 1), "not a label 0-6"),
    "bad_usage": (GOOD.replace("Training", "Holdout"), "Usage 'holdout'"),
}


@pytest.mark.parametrize("kind", BAD_ROWS)
def test_bad_rows_strict_and_lenient(tmp_path, fer_rows, kind):
    line, message = BAD_ROWS[kind]
    csv = _csv_with(tmp_path, line, fer_rows)
    result, out = prepare(tmp_path, source="fer2013", path=str(csv))
    assert_user_error(result, out, str(csv), "line 6", message)
    result, out = prepare(tmp_path, "--lenient", source="fer2013", path=str(csv))
    assert result.exit_code == 0, result.output
    m = load_manifest(out)
    expected_kind = "bad_pixel_value" if kind == "bad_pixel_range" else kind
    assert m["rows_rejected"] == {expected_kind: 1}
    assert m["totals"]["train"] == 140
    assert "skipped 1 bad inputs" in result.stderr


@pytest.mark.parametrize("case", ["missing", "empty", "header", "corrupt_gz"])
def test_bad_files(tmp_path, case):
    path = tmp_path / "fer.csv"
    if case == "empty":
        path.write_text("")
    elif case == "header":
        path.write_text("label,image\n1,2\n")
    elif case == "corrupt_gz":
        path = tmp_path / "fer.csv.gz"
        path.write_bytes(gzip.compress(b"emotion,pixels,Usage\n" + GOOD.encode() * 50)[:200])
    result, out = prepare(tmp_path, source="fer2013", path=str(path))
    needle = {"missing": "not found", "empty": "empty", "header": "no 'pixels' column", "corrupt_gz": "gzip"}[case]
    assert_user_error(result, out, str(path), needle)


@pytest.mark.parametrize("case", ["truncated", "not_image", "empty_class"])
def test_bad_image_folders_strict_and_lenient(tmp_path, fer_rows, case):
    root = tmp_path / "faces"
    for label, rows in _by_class(fer_rows["Training"]).items():
        _save_faces(root / FOLDER_NAMES[label], rows)
    if case == "truncated":
        bad = root / "anger" / "0000.png"
        bad.write_bytes(bad.read_bytes()[:100])
    elif case == "not_image":
        bad = root / "anger" / "notes.txt"
        bad.write_text("not a face")
    else:
        bad = root / "happy"
        bad.mkdir()
    result, out = prepare(tmp_path, source="image_folder", path=str(root))
    assert_user_error(result, out, str(bad))
    result, out = prepare(tmp_path, "--lenient", source="image_folder", path=str(root))
    assert result.exit_code == 0, result.output
    kind = {"truncated": "corrupt_image", "not_image": "not_an_image", "empty_class": "empty_class_folder"}[case]
    assert load_manifest(out)["rows_rejected"] == {kind: 1}


def test_unknown_parameter_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  source: demo\n  real_fracton: 0.5\n")
    out = tmp_path / "prepared"
    result = runner.invoke(app, ["prepare", "--params", str(params), "--out", str(out)])
    assert_user_error(result, out, "data.real_fracton", "unknown key")


def test_bad_parameter_value(tmp_path):
    result, out = prepare(tmp_path, source="demo", real_fraction=1.5)
    assert_user_error(result, out, "data.real_fraction")


def test_failed_prepare_keeps_previous_output(tmp_path, fer_rows):
    csv = write_fer_csv(tmp_path / "fer.csv", fer_rows)
    result, out = prepare(tmp_path, source="fer2013", path=str(csv))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    csv.write_text(csv.read_text().replace("Training", "Bogus", 1))
    result, _ = prepare(tmp_path, source="fer2013", path=str(csv))
    assert result.exit_code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
