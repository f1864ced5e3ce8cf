"""`fersynth export` on the real chain (prepare -> a trained tiny generator -> generate -> filter -> export):
the datasheet records the provenance of the files it ships with, checked against those files, and it
refuses a generator other than the one that drew the set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from generators.sampling import file_sha256, read_metadata
from pipelines.cli import app

PARAMS = {
    "data": {"source": "demo", "demo_per_class": [12] * 7},
    "generator": {"kind": "gan", "gan": {"z_dim": 16, "g_channels": [16, 16, 8, 8], "d_kind": "plain",
                                         "d_channels": [8, 8, 16, 16], "judge_guidance": 0.0, "batch_size": 8,
                                         "steps": 2, "sample_every": 1000, "quality_every": 1000,
                                         "checkpoint_every": 2, "threads": 1, "device": "cpu", "max_minutes": None}},
    "generate": {"per_class": 6},
    "filter": {"label_fidelity": False, "realism": False, "min_keep_fraction": 0.0, "lpips": False, "inception": False},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def ok(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def chain(tmp_path, monkeypatch) -> Path:
    from classifiers.architectures import model_from_config
    from classifiers.config import TrainConfig
    from classifiers.judge import Judge

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    ok("prepare")
    torch.manual_seed(0)
    cfg = TrainConfig(arch="vgg_fer", width=0.125, dropout=0.0)
    Judge(model_from_config(cfg), cfg).save(tmp_path / "models" / "judge" / "model.safetensors")
    ok("train-generator", "--no-judge")
    ok("generate")
    ok("filter")
    return tmp_path


def test_datasheet_records_the_real_generator_and_data(chain):
    ok("export", "--out", "export")
    generator = Path("models/generator/generator.safetensors")
    sheet = Path("export/DATASHEET.md").read_text()
    made_by = json.loads(Path("data/synthetic/manifest.json").read_text())["generator_sha256"]
    assert made_by == file_sha256(generator)
    line = next(li for li in sheet.splitlines() if li.startswith("- Generator:"))
    assert f"`{generator}`" in line and f"sha256 `{made_by[:16]}...`" in line
    meta = read_metadata(generator)
    assert meta["steps"] == 2 and f"kind `{meta['kind']}`, trained 2 steps" in line
    prepared = json.loads(Path("data/prepared/manifest.json").read_text())
    assert f"train counts {prepared['counts']['train']}" in sheet

    quality = json.loads(Path("metrics/quality.json").read_text())
    n = quality["n_kept"]
    assert sheet.startswith("# Datasheet") and f"{n} grayscale 48x48 faces" in sheet
    assert "## Memorization check" in sheet and "## Intended use" in sheet
    assert f"| fid | {quality['before']['fid']} | {quality['after']['fid']} |" in sheet
    from facedata.synthetic import load_synthetic

    kept, _ = load_synthetic("data/filtered")
    rows = list(csv.DictReader(open("export/synthetic_fer2013.csv")))
    assert len(rows) == n == len(list(Path("export/png").rglob("*.png")))
    assert [int(r["emotion"]) for r in rows] == kept.labels.tolist()
    assert torch.equal(torch.tensor([[int(p) for p in r["pixels"].split()] for r in rows], dtype=torch.uint8),
                       kept.images.reshape(n, -1))
    assert Path("export/manifest.csv").read_bytes() == Path("data/filtered/manifest.csv").read_bytes()


def test_export_refuses_a_generator_that_did_not_draw_the_set(chain):
    """Retrained after generate (more steps, same path): the datasheet would name a file that cannot
    regenerate a single exported face."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["generator"]["gan"]["steps"] = 3
    Path("params.yaml").write_text(yaml.safe_dump(params))
    ok("train-generator", "--no-judge")
    result = invoke("export", "--out", "export")
    assert result.exit_code == 2, result.output
    assert "generator.safetensors" in result.output and "did not draw" in result.output
    assert not Path("export").exists()


def test_export_refuses_edits_of_real_faces_unless_allowed_and_then_says_so(chain):
    """A set holding SDEdit edits (sources recorded) keeps real people's identities: refused by default."""
    from safetensors.torch import load_file, save_file

    path = Path("data/filtered/synthetic.safetensors")
    tensors = load_file(str(path))
    tensors["sources"] = torch.arange(len(tensors["labels"]))  # as if each face were an edit of real face i
    save_file(tensors, str(path))
    refused = invoke("export", "--out", "export")
    assert refused.exit_code == 2 and "edits of real people's faces" in refused.output and "--allow-edits" in refused.output
    assert not Path("export").exists()
    ok("export", "--out", "export", "--allow-edits")
    assert "## Derived from real people's faces" in Path("export/DATASHEET.md").read_text()
