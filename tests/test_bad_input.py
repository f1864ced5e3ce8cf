"""Inputs that real users hand in: CSVs saved by Excel, misspelt class folders, broken params files."""

from __future__ import annotations

import codecs
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from facedata.prepared import load_manifest
from facedata.sources.fer2013_csv import read_fer2013_csv
from pipelines.cli import app
from tests.conftest import write_fer_csv, write_params


def small_fer_rows(per_usage: int = 7, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """FER2013-format rows with random pixels, one label per row cycling 0-6 (no real data needed)."""
    rng = np.random.default_rng(seed)
    return {usage: [(str(i % 7), " ".join(map(str, rng.integers(0, 256, 48 * 48)))) for i in range(per_usage)]
            for usage in ("Training", "PublicTest", "PrivateTest")}


# ---------------------------------------------------------------- FER2013 CSV with a byte-order mark


@pytest.mark.parametrize("gz", [False, True], ids=["csv", "csv.gz"])
def test_fer2013_csv_with_a_utf8_bom_reads_like_one_without(tmp_path, gz):
    plain = write_fer_csv(tmp_path / "plain.csv", small_fer_rows())
    data = codecs.BOM_UTF8 + plain.read_bytes()  # what Excel's "CSV UTF-8" writes
    bom = tmp_path / ("bom.csv.gz" if gz else "bom.csv")
    bom.write_bytes(gzip.compress(data) if gz else data)
    want, got = read_fer2013_csv(plain), read_fer2013_csv(bom)
    assert set(got.splits) == {"train", "val", "test"}
    for split, (images, labels) in want.splits.items():
        assert torch.equal(got.splits[split][0], images) and torch.equal(got.splits[split][1], labels)


def test_a_bom_alone_is_still_an_empty_file(tmp_path):
    from runtime.errors import UserError

    path = tmp_path / "fer.csv"
    path.write_bytes(codecs.BOM_UTF8)
    with pytest.raises(UserError, match="file is empty"):
        read_fer2013_csv(path)


# ---------------------------------------------------------------- image-folder class names

runner = CliRunner()


def face_folders(root: Path, names: list[str], per_class: int = 3) -> Path:
    """<root>/<name>/<i>.png with small random grayscale faces."""
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def prepare_folder(tmp_path: Path, root: Path, *extra: str, **data):
    params = write_params(tmp_path / "params.yaml", source="image_folder", path=str(root), val_fraction=0.2,
                          test_fraction=0.2, **data)
    out = tmp_path / "prepared"
    return runner.invoke(app, ["prepare", "--params", str(params), "--out", str(out), *extra]), out


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


SEVEN = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def test_misspelt_class_folder_stops_strict_mode_with_the_fix(tmp_path):
    root = face_folders(tmp_path / "faces", [*SEVEN[:5], "suprise", "neutral"])
    result, out = prepare_folder(tmp_path, root)
    line = one_error_line(result)
    assert str(root / "suprise") in line
    assert "did you mean surprise?" in line
    assert "data.class_map: {suprise: drop}" in line and "data.class_map: {suprise: surprise}" in line
    assert "--lenient" in line
    assert not out.exists(), "a failed prepare must write nothing"


def test_unlike_folder_name_lists_the_expressions(tmp_path):
    root = face_folders(tmp_path / "faces", [*SEVEN, "7 misc"])
    line = one_error_line(prepare_folder(tmp_path, root)[0])
    assert "'7 misc'" in line and "expected one of angry, disgust" in line
    assert 'data.class_map: {"7 misc": drop}' in line


def test_unknown_class_folder_is_dropped_and_counted_when_lenient(tmp_path):
    root = face_folders(tmp_path / "faces", [*SEVEN[:5], "suprise", "neutral"])
    result, out = prepare_folder(tmp_path, root, "--lenient")
    assert result.exit_code == 0, result.output
    m = load_manifest(out)
    assert m["classes_dropped"] == {"suprise": 3}
    assert sum(m["counts"][s]["surprise"] for s in ("train", "val", "test")) == 0


@pytest.mark.parametrize(("class_map", "dropped", "surprise"), [({"suprise": "drop"}, {"suprise": 3}, 0),
                                                                ({"suprise": "surprise"}, {}, 3)])
def test_class_map_settles_a_folder_name_in_strict_mode(tmp_path, class_map, dropped, surprise):
    root = face_folders(tmp_path / "faces", [*SEVEN[:5], "suprise", "neutral", "contempt"])
    result, out = prepare_folder(tmp_path, root, class_map=class_map)
    assert result.exit_code == 0, result.output
    m = load_manifest(out)
    assert m["classes_dropped"] == {**dropped, "contempt": 3}, "contempt is a known class outside the 7"
    assert sum(m["counts"][s]["surprise"] for s in ("train", "val", "test")) == surprise


# ---------------------------------------------------------------- YAML syntax errors in a params file

BROKEN_YAML = {  # text, 1-based (line, column) an editor shows for the break, what yaml says
    "colon_in_value": ("data:\n  source: demo\n  seed: 1: 2\n", (3, 10), "mapping values are not allowed here"),
    "bad_indent": ("data:\n  source: demo\n lenient: true\n", (3, 2), "expected <block end>"),
    "unclosed_list": ("data:\n  demo_per_class: [3, 3, 3\n", (3, 1), "expected ',' or ']'"),
    "tab": ("data:\n\tsource: demo\n", (2, 1), "cannot start any token"),
}


@pytest.mark.parametrize("case", BROKEN_YAML)
def test_params_yaml_syntax_error_names_line_and_column(tmp_path, case):
    from pipelines.config import read_params
    from runtime.errors import UserError

    text, (line, column), problem = BROKEN_YAML[case]
    params = tmp_path / "params.yaml"
    params.write_text(text)
    with pytest.raises(UserError) as e:
        read_params(params)
    message = str(e.value)
    assert message.startswith(f"{params}: line {line}, column {column}: not valid YAML"), message
    assert problem in message and "\n" not in message


def test_params_yaml_syntax_error_through_the_cli(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  source: demo\n  seed: 1: 2\n")
    out = tmp_path / "prepared"
    line = one_error_line(runner.invoke(app, ["prepare", "--params", str(params), "--out", str(out)]))
    assert f"{params}: line 3, column 10:" in line
    assert not out.exists()
