"""Atomic file and directory writes.

Every output is first written under a temporary name in the same directory and then renamed, so an
interrupted stage never leaves a half-written file that DVC or the next stage would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _sibling_name(path: Path) -> Path:
    """A fresh hidden name next to `path`; callers create it exclusively and draw again on a clash."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _create_file(path: Path) -> Path:
    # Not tempfile.mkstemp: it creates 0600 files, which survive the rename and make shared outputs
    # (data/prepared, reports, exported datasets) unreadable to others. os.open with 0o666 lets the
    # kernel apply the process umask, exactly as an ordinary open() would.
    while True:
        tmp = _sibling_name(path)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _create_dir(path: Path) -> Path:
    # Not tempfile.mkdtemp (0700), for the same reason as _create_file: mkdir's 0o777 honours the umask.
    while True:
        tmp = _sibling_name(path)
        try:
            tmp.mkdir(mode=0o777)
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write to; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_file(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces the directory `path`.

    The old directory is moved aside before the new one is renamed into place, and removed after,
    so at every moment `path` is either the complete old output or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_dir(path)
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
