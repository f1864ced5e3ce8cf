"""`fersynth export` on the real chain (prepare -> a trained tiny generator -> generate -> filter -> export):
a Hugging Face imagefolder that `datasets` loads, whose card records the provenance of the files it ships
with (checked against those files); it refuses a generator other than the one that drew the set, edits
of real faces and sets that did not pass the memorization check, unless told otherwise."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from generators.sampling import generator_sha256, read_metadata
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


def test_export_is_an_imagefolder_datasets_loads_with_a_card_and_regenerable_rows(chain):
    """datasets.load_dataset("imagefolder") reads the export: one row per kept face, the right labels as a
    ClassLabel in FER2013 order, filter scores as columns; every row's (label, seed) regenerates its image
    with the generator; the card's YAML header parses and its body names the generator and the data."""
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import DatasetCard

    from facedata.sources.image_folder import read_labelled_folder
    from facedata.synthetic import load_synthetic
    from generators.registry import load_sampler
    from runtime.labels import EXPRESSIONS

    ok("export", "--out", "export")
    generator = Path("models/generator/model")
    kept, seeds = load_synthetic("data/filtered")
    quality = json.loads(Path("metrics/quality.json").read_text())
    n = quality["n_kept"]
    assert n == len(kept) > 0

    faces = datasets.load_dataset("imagefolder", data_dir="export", split="train", cache_dir="hf_cache")
    assert faces.num_rows == n
    ids = [int(i) for i in faces["id"]]
    order = sorted(range(n), key=ids.__getitem__)  # the kept set is in ascending id order
    assert [faces["label"][i] for i in order] == [EXPRESSIONS[k] for k in kept.labels.tolist()]
    assert [int(faces["seed"][i]) for i in order] == seeds.tolist()
    assert {"label_prob", "realism", "nn_real_dist", "reason"} <= set(faces.column_names)
    made_by = json.loads(Path("data/synthetic/manifest.json").read_text())["generator_sha256"]
    assert set(faces["generator_sha256"]) == {made_by} and made_by == generator_sha256(generator)

    sampler = load_sampler(generator)
    labels = torch.tensor([EXPRESSIONS.index(faces["label"][i]) for i in order])
    regenerated = sampler.sample(labels, torch.tensor([int(faces["seed"][i]) for i in order]))
    pixels = torch.stack([torch.from_numpy(np.array(faces[i]["image"].convert("L"))) for i in order])[:, None]
    assert torch.equal(pixels, regenerated) and torch.equal(pixels, kept.images)

    card = DatasetCard.load("export/README.md")
    assert card.data.license == "other" and card.data.task_categories == ["image-classification"]
    assert card.data.size_categories == ["n<1K"] and card.data.configs[0]["data_files"][0]["split"] == "train"
    body = card.text
    assert body.lstrip().startswith("# Synthetic facial-expression faces") and f"{n} grayscale 48x48 faces" in body
    line = next(li for li in body.splitlines() if li.startswith("- Generator:"))
    meta = read_metadata(generator)
    assert f"`{generator}`" in line and f"sha256 `{made_by[:16]}...`" in line and f"kind `{meta['kind']}`, trained 2 steps" in line
    prepared = json.loads(Path("data/prepared/manifest.json").read_text())
    assert f"train counts {prepared['counts']['train']}" in body
    for section in ("## Filters and thresholds", "## Memorization check", "## Intended use and limitations"):
        assert section in body
    assert f"| fid | {quality['before']['fid']} | {quality['after']['fid']} |" in body
    assert f"False-rejection rate on real strangers: {quality['memorization_false_rejection_on_real_test']}" in body
    rows = list(csv.DictReader(open("export/synthetic_fer2013.csv")))
    assert [int(r["emotion"]) for r in rows] == kept.labels.tolist()
    # an export is itself a synthetic set that another project measures (generate.source: folder)
    again = read_labelled_folder("export")
    assert torch.equal(again.images, kept.images) and torch.equal(again.labels, kept.labels)


def test_export_refuses_a_set_that_did_not_pass_the_memorization_check(chain):
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["filter"]["memorization"] = False
    Path("params.yaml").write_text(yaml.safe_dump(params))
    ok("filter")
    refused = invoke("export", "--out", "export")
    assert refused.exit_code == 2 and "memorization check" in refused.output and "--allow-memorization-risk" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not Path("export").exists()
    ok("export", "--out", "export", "--allow-memorization-risk")
    assert "Not passed: the memorization check was off" in Path("export/README.md").read_text()


def test_export_refuses_a_generator_that_did_not_draw_the_set(chain):
    """Retrained after generate (more steps, same path): the datasheet would name a file that cannot
    regenerate a single exported face."""
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["generator"]["gan"]["steps"] = 3
    Path("params.yaml").write_text(yaml.safe_dump(params))
    ok("train-generator", "--no-judge")
    result = invoke("export", "--out", "export")
    assert result.exit_code == 2, result.output
    assert "models/generator/model" in result.output and "did not draw" in result.output
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
    assert "## Derived from real people's faces" in Path("export/README.md").read_text()
