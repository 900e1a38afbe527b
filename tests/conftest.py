"""Tiny data in the real on-disk formats, written by the tests themselves (no network, no ../shared)."""

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_cifar_archive(root: Path, flavour: str, n_per_batch: int = 6, seed: int = 0) -> Path:
    """A tiny cifar-10-python.tar.gz / cifar-100-python.tar.gz laid out exactly like the official one."""
    rng = np.random.default_rng(seed)
    build = root / "build"
    if flavour == "cifar10":
        folder, names, label_key, meta_key = (
            "cifar-10-batches-py",
            ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"],
            "labels",
            "label_names",
        )
        meta_name, classes = "batches.meta", [f"class{i}" for i in range(10)]
    else:
        folder, names, label_key, meta_key = "cifar-100-python", ["train", "test"], "fine_labels", "fine_label_names"
        meta_name, classes = "meta", [f"fine{i}" for i in range(100)]
    (build / folder).mkdir(parents=True)
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            label_key: rng.integers(0, len(classes), n_per_batch).tolist(),
        }
        (build / folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (build / folder / meta_name).write_bytes(pickle.dumps({meta_key: classes}, protocol=2))
    archive = root / ("cifar-10-python.tar.gz" if flavour == "cifar10" else "cifar-100-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(build / folder, arcname=folder)
    return archive


def patch_cifar_md5(monkeypatch, cls, archive: Path) -> None:
    """Point torchvision's checksums at the tiny archive, so its own integrity checks run unchanged."""
    with tarfile.open(archive) as tar:
        members = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    monkeypatch.setattr(cls, "tgz_md5", md5(archive))
    monkeypatch.setattr(cls, "train_list", [[n, hashlib.md5(members[n]).hexdigest()] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, hashlib.md5(members[n]).hexdigest()] for n, _ in cls.test_list])
    monkeypatch.setitem(cls.meta, "md5", hashlib.md5(members[cls.meta["filename"]]).hexdigest())


def write_stl10(root: Path, monkeypatch, n_train=8, n_test=6, seed=0) -> dict:
    """stl10_binary/ as in the official release: column-major uint8 images, 1-based uint8 labels."""
    from torchvision.datasets import STL10

    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    images = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", 2)):
        x = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        images[split] = x
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        if split != "unlabeled":
            y = rng.integers(0, 10, n).astype(np.uint8)
            images[f"{split}_y"] = y
            (folder / f"{split}_y.bin").write_bytes((y + 1).tobytes())
    (folder / "class_names.txt").write_text("\n".join(f"stl{i}" for i in range(10)) + "\n")
    monkeypatch.setattr(STL10, "train_list", [[n, md5(folder / n)] for n, _ in STL10.train_list])
    monkeypatch.setattr(STL10, "test_list", [[n, md5(folder / n)] for n, _ in STL10.test_list])
    return images


def write_image_folder(root: Path, classes=("cat", "dog", "frog"), per_class=5, size=32, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def offline(monkeypatch):
    """Any torchvision download raises as it does on a machine with no network."""
    import urllib.error

    from torchvision.datasets import cifar, stl10

    def fail(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", fail)
    monkeypatch.setattr(stl10, "download_and_extract_archive", fail)
