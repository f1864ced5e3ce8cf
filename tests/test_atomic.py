"""Atomic writes give outputs ordinary permissions (0666/0777 less the umask), not tempfile's owner-only ones."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runtime import atomic


@pytest.fixture
def umask():
    """Set the process umask for one test and restore the caller's after."""
    before = os.umask(0o022)
    yield os.umask
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_through_every_helper(root: Path) -> tuple[list[Path], list[Path]]:
    """(files, dirs) written through each atomic helper, including a file and a folder inside an atomic_dir."""
    atomic.write_bytes(root / "a.bin", b"x")
    atomic.write_text(root / "b.txt", "x")
    atomic.write_json(root / "c.json", {"x": 1})
    with atomic.atomic_path(root / "d.bin") as tmp:
        tmp.write_bytes(b"x")
    with atomic.atomic_dir(root / "out") as tmp:
        (tmp / "plain.txt").write_text("x")
        atomic.write_text(tmp / "nested.txt", "x")
        (tmp / "sub").mkdir()
    files = [root / n for n in ("a.bin", "b.txt", "c.json", "d.bin", "out/plain.txt", "out/nested.txt")]
    return files, [root / "out", root / "out" / "sub"]


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                             (0o002, 0o664, 0o775)])
def test_atomic_outputs_honour_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    files, dirs = write_through_every_helper(tmp_path)
    assert {str(f.relative_to(tmp_path)): oct(mode(f)) for f in files} == {
        str(f.relative_to(tmp_path)): oct(file_mode) for f in files}
    assert {str(d.relative_to(tmp_path)): oct(mode(d)) for d in dirs} == {
        str(d.relative_to(tmp_path)): oct(dir_mode) for d in dirs}


def test_replacing_an_atomic_dir_leaves_no_temporaries(tmp_path, umask):
    umask(0o022)
    for text in ("old", "new"):
        with atomic.atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f.txt").write_text(text)
    assert (tmp_path / "out" / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_atomic_write_leaves_nothing(tmp_path, umask):
    umask(0o022)
    with pytest.raises(RuntimeError), atomic.atomic_path(tmp_path / "f.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError
    with pytest.raises(RuntimeError), atomic.atomic_dir(tmp_path / "d") as tmp:
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_and_models_are_shareable_too(tmp_path, umask):
    """Checkpoints and saved models (safetensors) go through the same atomic write."""
    import torch

    from runtime.checkpoint import load_checkpoint, save_checkpoint

    umask(0o022)
    save_checkpoint(tmp_path / "model.safetensors", {"w": torch.ones(2)}, {"kind": "test"})
    assert oct(mode(tmp_path / "model.safetensors")) == oct(0o644)
    tensors, meta = load_checkpoint(tmp_path / "model.safetensors")
    assert meta == {"kind": "test"} and tensors["w"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
