"""Atomic file writes: write to a temp file in the same folder, then rename, so that a crash or a kill
never leaves a file that looks complete to DVC or to a resumed run."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from impactx import ImpactXError


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


def new_file_mode(path: Path) -> int:
    """The mode `path` should end with: the mode of the file it replaces, else what the user's umask gives a
    new file (mkstemp's 600 would make params.yaml and every output private)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mask = os.umask(0o022)  # reading the umask means setting it: set it straight back
        os.umask(mask)
        return 0o666 & ~mask


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp_path to path (with the mode new_file_mode gives)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, new_file_mode(path))
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


# what numpy and torch raise on a truncated, overwritten or foreign file
DAMAGED = (OSError, EOFError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError)


def read(path: str | Path, load):
    """load(path) for a file a stage wrote; a damaged one (truncated, foreign) is one line naming the fix,
    not a traceback (and exit 2 in a stage, so an orchestrator does not retry it)."""
    try:
        return load(path)
    except FileNotFoundError:
        raise
    except DAMAGED as e:
        raise ImpactXError(
            f"{path} is damaged ({type(e).__name__}: {str(e).strip().splitlines()[0][:80] if str(e).strip() else '-'}): "
            f"restore it with `dvc checkout {path}`, or re-run the stage that writes it (`dvc repro -f -s <stage>`)"
        ) from None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint this pipeline wrote: tensors and plain values only (torch's weights_only: no pickle runs)."""
    return torch.load(path, map_location="cpu", weights_only=True)
