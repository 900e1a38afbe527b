"""Atomic file writes: write to a temp file in the same folder, then rename, so that a crash or a kill
never leaves a file that looks complete to DVC or to a resumed run."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


@contextlib.contextmanager
def exclusive_lock(path: Path, on_wait=None):
    """Hold an exclusive flock on `path` (created if missing); on_wait(path) is called first when another
    process holds it, then this one waits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp_path to path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path):
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def save_json(path: Path, obj) -> None:
    atomic_write(path, lambda t: t.write_text(json.dumps(obj, indent=2) + "\n"))


def save_torch(path: Path, obj) -> None:
    """Through a file handle: given a path, torch writes the (random) temp file's name into the archive,
    and the same weights would give different bytes, so DVC would re-run everything downstream."""

    def write(tmp: Path):
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write)


def save_npz(path: Path, **arrays) -> None:
    def write(tmp: Path):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)
