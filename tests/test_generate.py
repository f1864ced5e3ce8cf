"""`generate`: policies, the output format and manifest, exact regeneration, PNG and CSV exports,
atomic output, and both generator kinds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import pipelines.generate as generate
from facedata.sources.demo_faces import draw_demo_faces
from facedata.synthetic import load_synthetic
from generators.config import GanConfig, GenerateConfig
from generators.gan_sampling import save_generator
from generators.gan_training import train_gan
from generators.registry import load_sampler
from generators.sampling import generator_sha256
from pipelines.generate import class_counts, run_generate
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS

TINY = dict(z_dim=16, g_channels=[16, 16, 8, 8], judge_guidance=0.0, d_kind="plain", d_channels=[8, 8, 16, 16], batch_size=8, steps=3,
            sample_every=1000, quality_every=1000, threads=1, device="cpu")
REAL = [40, 5, 30, 50, 30, 20, 35]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread is fastest


@pytest.fixture(scope="module")
def gan_path(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    images, labels = draw_demo_faces(12, seed=2)
    result = train_gan(images, labels, GanConfig(**TINY), progress=False)
    path = tmp_path_factory.mktemp("gan") / "model"
    save_generator(path, result.generator, GanConfig(**TINY), steps=result.steps)
    return path


def test_policies_give_the_asked_counts():
    assert class_counts(GenerateConfig(policy="per_class", per_class=3), REAL) == [3] * 7
    assert class_counts(GenerateConfig(policy="balance"), REAL) == [10, 45, 20, 0, 20, 30, 15]
    assert class_counts(GenerateConfig(policy="balance"), dict(zip(EXPRESSIONS, REAL))) == [10, 45, 20, 0, 20, 30, 15]
    assert class_counts(GenerateConfig(policy="counts", counts=[1, 2, 3, 4, 5, 6, 7]), REAL) == [1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(ValidationError, match="counts"):
        GenerateConfig(policy="counts")
    with pytest.raises(ValidationError, match="counts"):
        GenerateConfig(policy="counts", counts=[1, 2])
    with pytest.raises(ValidationError, match="nope"):
        GenerateConfig(nope=1)
    with pytest.raises(UserError, match="at most"):
        class_counts(GenerateConfig(policy="per_class", per_class=2_000_000), REAL)


def test_generate_per_class_writes_dataset_manifest_and_regenerates_exactly(gan_path, tmp_path):
    out = tmp_path / "synthetic"
    cfg = GenerateConfig(policy="per_class", per_class=4, seed=3, truncation=1.5, batch_size=8)
    manifest = run_generate(cfg, gan_path, REAL, out, progress=False)
    data, seeds = load_synthetic(out)
    assert len(data) == 28 and torch.equal(torch.bincount(data.labels, minlength=7), torch.full((7,), 4))
    assert torch.equal(seeds, 30_000_000 + torch.arange(28))
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["kind"] == "gan" and manifest["truncation"] == 1.5 and manifest["total"] == 28
    assert manifest["generator_sha256"] == generator_sha256(gan_path)
    assert manifest["counts"]["disgust"] == 4 and manifest["seeds"]["first"] == 30_000_000
    # any image comes back from (generator file, label, seed) alone
    sampler = load_sampler(gan_path)
    for i in (0, 13, 27):
        again = sampler.sample(data.labels[i : i + 1], seeds[i : i + 1], truncation=1.5)
        assert torch.equal(again[0], data.images[i])
    assert not (out / "png").exists() and not (out / generate.CSV_FILE).exists()


def test_balance_policy_with_png_and_csv_exports(gan_path, tmp_path):
    out = tmp_path / "synthetic"
    cfg = GenerateConfig(policy="balance", export_png=True, export_csv=True, batch_size=64)
    manifest = run_generate(cfg, gan_path, dict(zip(EXPRESSIONS, REAL)), out, progress=False)
    data, seeds = load_synthetic(out)
    want = [max(REAL) - c for c in REAL]
    assert torch.bincount(data.labels, minlength=7).tolist() == want == list(manifest["counts"].values())

    import numpy as np
    from PIL import Image

    for c, name in enumerate(EXPRESSIONS):
        files = sorted((out / "png" / name).glob("*.png"))
        assert len(files) == want[c]
    i = int((data.labels == 1).nonzero()[3])
    with Image.open(out / "png" / "disgust" / f"{i:07d}.png") as im:
        assert im.mode == "L" and torch.equal(torch.from_numpy(np.array(im)), data.images[i, 0])

    lines = (out / generate.CSV_FILE).read_text().splitlines()
    assert lines[0] == "emotion,pixels,Usage" and len(lines) == 1 + len(data)
    for i in (0, len(data) // 2, len(data) - 1):
        emotion, pixels, usage = lines[1 + i].split(",")
        assert usage == "Training" and int(emotion) == int(data.labels[i])
        row = torch.tensor([int(p) for p in pixels.split(" ")], dtype=torch.uint8).view(1, 48, 48)
        assert torch.equal(row, data.images[i])


def test_output_is_atomic_and_errors_are_user_errors(gan_path, tmp_path, monkeypatch):
    out = tmp_path / "synthetic"
    run_generate(GenerateConfig(per_class=1), gan_path, REAL, out, progress=False)
    before = (out / "manifest.json").read_text()

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(generate, "export_csv", broken)
    with pytest.raises(RuntimeError):
        run_generate(GenerateConfig(per_class=2, export_csv=True), gan_path, REAL, out, progress=False)
    assert (out / "manifest.json").read_text() == before  # the old complete output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]  # no temporary leftovers
    with pytest.raises(UserError, match="no generator here"):
        run_generate(GenerateConfig(per_class=1), tmp_path / "missing", REAL, tmp_path / "x", progress=False)
    with pytest.raises(UserError, match="not found"):
        load_synthetic(tmp_path / "nowhere")


def test_generate_with_a_diffusion_generator(tmp_path):
    pytest.importorskip("diffusers")
    from generators.config import DiffusionConfig
    from generators.diffusion_model import build_unet
    from generators.diffusion_sampling import save_diffusion_sampler

    cfg = DiffusionConfig(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8,
                          attention_head_dim=8, num_inference_steps=2, sample_unet_batch=8, device="cpu")
    torch.manual_seed(0)
    path = tmp_path / "model"
    save_diffusion_sampler(path, build_unet(cfg).eval(), cfg)
    out = tmp_path / "synthetic"
    manifest = run_generate(GenerateConfig(policy="counts", counts=[1, 0, 0, 2, 0, 0, 1], guidance_scale=1.5),
                            path, REAL, out, progress=False)
    data, seeds = load_synthetic(out)
    assert manifest["kind"] == "diffusion" and manifest["guidance_scale"] == 1.5 and "truncation" not in manifest
    assert data.labels.tolist() == [0, 3, 3, 6] and data.images.dtype == torch.uint8
    again = load_sampler(path).sample(data.labels[2:3], seeds[2:3], guidance_scale=1.5)
    assert torch.equal(again[0], data.images[2])


def test_edit_mode_records_sources_and_regenerates_and_the_gan_refuses(gan_path, tmp_path):
    pytest.importorskip("diffusers")
    from facedata.prepared import LabelledImages
    from facedata.sources.demo_faces import draw_demo_faces
    from facedata.synthetic import load_sources
    from generators.config import DiffusionConfig
    from generators.diffusion_model import build_unet
    from generators.diffusion_sampling import save_diffusion_sampler

    real = LabelledImages(*draw_demo_faces([4, 4, 4, 20, 4, 4, 20], seed=5))
    cfg = DiffusionConfig(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8,
                          attention_head_dim=8, num_inference_steps=4, sample_unet_batch=8, device="cpu")
    torch.manual_seed(0)
    path = tmp_path / "model"
    save_diffusion_sampler(path, build_unet(cfg).eval(), cfg)
    gen_cfg = GenerateConfig(policy="counts", counts=[3, 2, 0, 0, 0, 0, 0], mode="edit", edit_strength=0.5,
                             edit_from=["happy", "neutral"])
    manifest = run_generate(gen_cfg, path, REAL, tmp_path / "edits", progress=False, real_train=real)
    data, seeds = load_synthetic(tmp_path / "edits")
    sources = load_sources(tmp_path / "edits")
    assert manifest["mode"] == "edit" and manifest["derived_from_real_faces"] is True
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert set(real.labels[sources].tolist()) <= {3, 6}  # happy and neutral faces, edited toward angry/disgust
    again = load_sampler(path).edit(real.images[sources[3:4]], data.labels[3:4], seeds[3:4], 0.5, guidance_scale=2.0)
    assert torch.equal(again[0], data.images[3])
    sampled = run_generate(GenerateConfig(policy="counts", counts=[1, 0, 0, 0, 0, 0, 0]), path, REAL,
                           tmp_path / "sampled", progress=False)
    assert sampled["derived_from_real_faces"] is False and load_sources(tmp_path / "sampled") is None
    with pytest.raises(UserError, match="diffusion generator") as e:
        run_generate(gen_cfg, gan_path, REAL, tmp_path / "gan", progress=False, real_train=real)
    assert "\n" not in str(e.value) and not (tmp_path / "gan").exists()


def write_foreign_set(root: Path, layout: str) -> dict[str, list]:
    """Faces as another generator's script would save them: RGB, 64x64 or 37x41, class folders named by
    aliases (or a Hugging Face metadata.csv), not fersynth's format. Returns expression -> arrays written."""
    from PIL import Image

    rng = np.random.default_rng(0)
    names = {"angry": "anger", "happy": "happiness", "surprise": "surprised", "neutral": "neutral"}
    written: dict[str, list] = {}
    rows = ["file_name,label"]
    for k, (expression, alias) in enumerate(names.items()):
        for i in range(3):
            pixels = rng.integers(0, 256, size=(64, 64, 3) if i % 2 else (41, 37, 3), dtype=np.uint8)
            rel = f"{alias}/img_{i}.png" if layout == "classes" else f"images/{k}_{i}.jpg" if i == 2 else f"images/{k}_{i}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / rel)
            rows.append(f"{rel},{alias if i else EXPRESSIONS.index(expression)}")
            written.setdefault(expression, []).append(root / rel)
    if layout == "metadata":
        (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return written


@pytest.mark.parametrize("layout", ["classes", "metadata"])
def test_generate_reads_a_folder_made_elsewhere_exactly_as_prepare_reads_images(layout, tmp_path):
    """generate.source folder: class names through the aliases, any size or colour preprocessed exactly as
    prepare's image-folder reader, seeds -1, and the manifest names the folder, its sha256 and each file."""
    from facedata.sources.image_folder import _load_gray48

    written = write_foreign_set(tmp_path / "theirs", layout)
    cfg = GenerateConfig(source="folder", folder=str(tmp_path / "theirs"))
    manifest = generate.import_folder(cfg.folder, {}, False, REAL, tmp_path / "synthetic", cfg)
    data, seeds = load_synthetic(tmp_path / "synthetic")
    assert len(data) == 12 and bool((seeds == -1).all())
    assert manifest["source"] == "folder" and manifest["counts"]["happy"] == 3 and manifest["counts"]["disgust"] == 0
    for i, name in enumerate(manifest["file_names"]):
        expression = EXPRESSIONS[int(data.labels[i])]
        path = tmp_path / "theirs" / name
        assert path in written[expression], (name, expression)
        assert torch.equal(data.images[i, 0], torch.from_numpy(_load_gray48(path)))
    again = generate.import_folder(cfg.folder, {}, False, REAL, tmp_path / "again", cfg)
    assert again["folder_sha256"] == manifest["folder_sha256"]
    Path(written["happy"][0]).write_bytes(Path(written["angry"][0]).read_bytes())
    assert generate.import_folder(cfg.folder, {}, False, REAL, tmp_path / "again", cfg)["folder_sha256"] != manifest["folder_sha256"]


def test_a_folder_source_holding_no_faces_is_one_clear_error(tmp_path):
    """As synthetic_in/ is in git (its README only) until the user puts faces there."""
    (tmp_path / "synthetic_in").mkdir()
    (tmp_path / "synthetic_in" / "README.md").write_text("put faces here\n")
    with pytest.raises(UserError, match=r"synthetic_in: contains no class folders; expected <root>/<class>/<image>"):
        generate.import_folder(tmp_path / "synthetic_in", {}, False, REAL, tmp_path / "synthetic")
    assert not (tmp_path / "synthetic").exists()


def test_with_a_folder_source_train_generator_records_that_nothing_was_trained(tmp_path):
    """Its outputs say where the faces come from and hold no weights or curves of an earlier generator
    (which would no longer describe the faces); a sampler refuses the record."""
    from generators.sampling import read_metadata
    from pipelines.train_generator import record_no_generator

    live = tmp_path / "dvclive" / "generator"
    (live / "plots" / "metrics").mkdir(parents=True)
    (live / "plots" / "metrics" / "loss_g.tsv").write_text("step\tloss_g\n1\t0.5\n")
    note = record_no_generator("theirs/", tmp_path / "models" / "generator", tmp_path / "generator.json", live)
    assert note["kind"] == "none" and json.loads((tmp_path / "generator.json").read_text()) == note
    model = tmp_path / "models" / "generator" / "model"
    assert [f.name for f in model.iterdir()] == ["fersynth.json"] and read_metadata(model)["folder"] == "theirs/"
    assert list((live / "plots" / "metrics").iterdir()) == []  # the declared plots output exists, empty
    assert "theirs/" in (tmp_path / "models" / "generator" / "samples" / "README.txt").read_text()
    with pytest.raises(UserError, match="no generator"):
        load_sampler(model)


def test_a_foreign_folder_with_an_unknown_class_or_label_is_one_clear_error(tmp_path):
    write_foreign_set(tmp_path / "classes", "classes")
    (tmp_path / "classes" / "suprise").mkdir()
    with pytest.raises(UserError, match="did you mean surprise"):
        generate.import_folder(tmp_path / "classes", {}, False, REAL, tmp_path / "out")
    assert generate.import_folder(tmp_path / "classes", {"suprise": "drop"}, False, REAL, tmp_path / "out")["total"] == 12
    write_foreign_set(tmp_path / "hf", "metadata")
    with open(tmp_path / "hf" / "metadata.csv", "a") as f:
        f.write("images/0_0.png,smirk\n")
    with pytest.raises(UserError, match=r"metadata.csv, row 14: label 'smirk'"):
        generate.import_folder(tmp_path / "hf", {}, False, REAL, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    with pytest.raises(UserError, match="synthetic folder"):
        generate.import_folder(tmp_path / "nowhere", {}, False, REAL, tmp_path / "out2")
    with pytest.raises(ValueError, match="mode 'edit' needs source 'model'"):
        GenerateConfig(source="folder", mode="edit")


def test_sample_draws_the_classes_and_seeds_asked_as_a_grid(gan_path, tmp_path):
    """`fersynth sample --class happy,sad --seeds 0-3,9`: a 2 x 5 grid whose tiles are the faces `generate`
    draws for those labels and seeds, and the same faces as PNGs."""
    from PIL import Image
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["sample", "--generator", str(gan_path), "--class", "happy,sad", "--seeds", "0-3,9",
                                      "--out", str(tmp_path / "grid.png"), "--faces", str(tmp_path / "faces")])
    assert result.exit_code == 0, result.output
    sampler = load_sampler(gan_path)
    seeds = torch.tensor([0, 1, 2, 3, 9])
    want = {(c, s): sampler.sample(torch.tensor([c]), torch.tensor([s]))[0, 0] for c in (3, 4) for s in seeds.tolist()}
    grid = torch.from_numpy(np.asarray(Image.open(tmp_path / "grid.png").convert("L")))
    assert tuple(grid.shape) == (2 * (2 * 50 + 2), 2 * (5 * 50 + 2))  # 2 rows x 5 columns, padding 2, upscaled 2x
    for r, c in enumerate((3, 4)):
        for k, s in enumerate(seeds.tolist()):
            top, left = 2 * (2 + 50 * r), 2 * (2 + 50 * k)
            assert torch.equal(grid[top : top + 96 : 2, left : left + 96 : 2], want[(c, s)]), (c, s)
            face = np.asarray(Image.open(tmp_path / "faces" / EXPRESSIONS[c] / f"seed{s:08d}.png"))
            assert torch.equal(torch.from_numpy(face), want[(c, s)])
    bad = CliRunner().invoke(app, ["sample", "--generator", str(gan_path), "--class", "smug", "--seeds", "0"])
    assert bad.exit_code == 2 and "'smug' is not an expression" in bad.output
    bad = CliRunner().invoke(app, ["sample", "--generator", str(gan_path), "--class", "all", "--seeds", "5-2"])
    assert bad.exit_code == 2 and "'5-2'" in bad.output
