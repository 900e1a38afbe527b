"""Data sources and the prepared dataset: uint8 N×C×H×W arrays with a fixed, seeded train/val/test split.

Sources:
    digits       scikit-learn's 8×8 handwritten digits (1,797 real images shipped inside scikit-learn,
                 which the project installs anyway), upsampled to 32×32 and repeated to 3 channels so that
                 the same LeNet-5 runs on it as on CIFAR. It needs no download: the offline default.
    cifar10/100  torchvision.datasets.CIFAR10/CIFAR100 (their own download and integrity checks).
    stl10        torchvision.datasets.STL10, labelled train/test splits, 96×96.
    imagefolder  torchvision.datasets.ImageFolder layout <path>/<class>/*.png.
"""

from __future__ import annotations

import json
import urllib.error
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from impactx import ImpactXError, layout
from impactx.config import DataParams
from impactx.io import atomic_write, read, save_json


@dataclass
class Split:
    x: np.ndarray  # uint8, N×C×H×W
    y: np.ndarray  # int64, N


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data: written to info.json by fetch_data, read by every stage."""

    source: str  # params.yaml data.source
    classes: list[str]  # class names, in label order
    image_shape: tuple[int, int, int]  # C, H, W
    mean: list[float]  # per channel, of the training split, in [0, 1]: models normalise with it
    std: list[float]
    sizes: dict[str, int]  # images per split: train, val, test

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict:
        return {**asdict(self), "image_shape": list(self.image_shape)}

    @classmethod
    def from_json(cls, d: dict) -> DatasetInfo:
        return cls(**{**d, "image_shape": tuple(d["image_shape"])})


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    info: DatasetInfo

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape


# ---------------------------------------------------------------- sources: each returns train, test, classes


def _load_digits(p: DataParams):
    from sklearn.datasets import load_digits

    d = load_digits()
    small = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0  # N×1×8×8 in [0, 1]
    big = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    x = (big.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).numpy()  # N×3×32×32 uint8
    return Split(x, d.target.astype(np.int64)), None, [str(c) for c in d.target_names]


_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, OSError)


def _torchvision_split(cls, root: Path, download: bool, **split_kw):
    """Load one split through torchvision, turning missing/corrupt files into one actionable line.
    Order: extracted files → a local archive in data.root → torchvision's download."""
    from torchvision.datasets.utils import check_integrity, extract_archive

    archive = root / cls.filename
    name = cls.__name__
    try:
        return cls(str(root), download=False, **split_kw)
    except RuntimeError:
        pass  # not extracted yet, or extracted files corrupt
    if archive.exists():
        if not check_integrity(str(archive), cls.tgz_md5):
            raise ImpactXError(f"{archive} is corrupt (MD5 mismatch): replace it with the original {cls.filename}")
        extract_archive(str(archive), str(root))
        try:
            return cls(str(root), download=False, **split_kw)
        except RuntimeError:
            raise ImpactXError(f"{name}: files extracted from {archive} fail their checksums: delete them") from None
    if not download:
        raise ImpactXError(f"{name}: {archive} not found and data.download is false: put {cls.filename} in data.root")
    try:
        return cls(str(root), download=True, **split_kw)
    except _NETWORK_ERRORS as e:
        raise ImpactXError(
            f"{name}: cannot download {cls.filename} ({type(e).__name__}): put {cls.filename} "
            f"in data.root ({root}) and run again"
        ) from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise ImpactXError(f"{name}: files under {root} are corrupt ({e}): delete them and run again") from None


def _load_cifar(p: DataParams):
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if p.source == "cifar10" else CIFAR100
    root = Path(p.root)
    tr = _torchvision_split(cls, root, p.download, train=True)
    te = _torchvision_split(cls, root, p.download, train=False)

    def to_split(ds):
        return Split(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, np.int64))

    return to_split(tr), to_split(te), list(tr.classes)


def _load_stl10(p: DataParams):
    from torchvision.datasets import STL10

    root = Path(p.root)
    tr = _torchvision_split(STL10, root, p.download, split="train")
    te = _torchvision_split(STL10, root, p.download, split="test")
    return Split(tr.data, tr.labels.astype(np.int64)), Split(te.data, te.labels.astype(np.int64)), list(tr.classes)


def _read_image_folder(path: str | None, what: str, image_size: int | None = None) -> tuple[Split, list[str]]:
    """<path>/<class>/* as uint8 N×C×H×W: one channel when every image is grey (PIL modes L and 1),
    else RGB. Images of mixed sizes need data.image_size: each is resized to it as it is read."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    if not path:
        raise ImpactXError(f"data.{what} is not set: point it at a folder laid out as <path>/<class>/*.png")
    if not Path(path).is_dir():
        raise ImpactXError(f"data.{what}: folder {path} not found: fix the path in params.yaml")
    try:
        folder = ImageFolder(path)
    except (FileNotFoundError, RuntimeError) as e:  # no class folders / no images
        raise ImpactXError(f"data.{what}: {path} has no usable classes ({e}): expected <path>/<class>/*.png") from None
    images = []
    for file, _ in folder.samples:
        try:
            with Image.open(file) as img:
                img.load()
                images.append(img.copy())
        except Exception as e:  # PIL raises several types for unreadable files
            raise ImpactXError(f"cannot read image {file} ({type(e).__name__}): remove or replace it") from None
    mode = "L" if all(img.mode in ("L", "1") for img in images) else "RGB"
    xs = []
    for im in images:
        a = np.asarray(im.convert(mode), dtype=np.uint8)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # C×H×W
        if image_size is not None and a.shape[1:] != (image_size, image_size):
            a = _resize(Split(a[None], np.zeros(1, np.int64)), image_size).x[0]
        xs.append(a)
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        raise ImpactXError(f"images under {path} have different sizes {sorted(shapes)[:3]}: set data.image_size"
                           " (each image is resized to image_size × image_size)")  # fmt: skip
    return Split(np.ascontiguousarray(np.stack(xs)), np.asarray(folder.targets, np.int64)), list(folder.classes)


def _load_imagefolder(p: DataParams):
    train, classes = _read_image_folder(p.path, "path", p.image_size)
    test = None
    if p.test_path:
        test, test_classes = _read_image_folder(p.test_path, "test_path", p.image_size)
        if test_classes != classes:
            raise ImpactXError(f"data.test_path classes {test_classes} differ from data.path classes {classes}")
    return train, test, classes


SOURCES = {
    "digits": _load_digits,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "stl10": _load_stl10,
    "imagefolder": _load_imagefolder,
}


# ---------------------------------------------------------------- split, resize, save, load


def _resize(split: Split, size: int | None) -> Split:
    if size is None or split.x.shape[-2:] == (size, size):
        return split
    out = []
    for i in range(0, len(split.x), 1024):
        chunk = torch.tensor(split.x[i : i + 1024], dtype=torch.float32)  # a copy: x may be read-only
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(chunk.round().clamp(0, 255).to(torch.uint8).numpy())
    return Split(np.concatenate(out), split.y)


def _take(split: Split, idx: np.ndarray) -> Split:
    idx = np.sort(idx)
    return Split(split.x[idx], split.y[idx])


def prepare(p: DataParams, seed: int) -> Dataset:
    """Load the source and split it: test = the source's own test split (or a held-out fraction),
    validation = a seeded fraction of the training split. The same params give the same arrays."""
    train, test, classes = SOURCES[p.source](p)
    rng = np.random.default_rng(seed)
    if test is None:
        perm = rng.permutation(len(train.y))
        n_test = max(1, round(p.test_fraction * len(perm)))
        test, train = _take(train, perm[:n_test]), _take(train, perm[n_test:])
    perm = rng.permutation(len(train.y))
    n_val = max(1, round(p.val_fraction * len(perm)))
    val, train = _take(train, perm[:n_val]), _take(train, perm[n_val:])
    if p.train_limit is not None and p.train_limit < len(train.y):
        train = _take(train, rng.permutation(len(train.y))[: p.train_limit])
    if p.test_limit is not None and p.test_limit < len(test.y):
        test = _take(test, rng.permutation(len(test.y))[: p.test_limit])
    if len(train.y) < 2:
        raise ImpactXError(f"only {len(train.y)} training image(s) after the split: add data or lower the fractions")
    train, val, test = (_resize(s, p.image_size) for s in (train, val, test))
    info = DatasetInfo(
        source=p.source,
        classes=list(classes),
        image_shape=tuple(train.x.shape[1:]),
        mean=(train.x.mean(axis=(0, 2, 3)) / 255).round(6).tolist(),
        std=(train.x.std(axis=(0, 2, 3)) / 255).round(6).tolist(),
        sizes={"train": len(train.y), "val": len(val.y), "test": len(test.y)},
    )
    return Dataset(train, val, test, info)


def save(ds: Dataset, out_dir: Path = layout.PREPARED) -> None:
    """dataset.npz (uint8 splits) and info.json (the DatasetInfo) under out_dir."""
    out_dir = Path(out_dir)
    arrays = {}
    for name in ("train", "val", "test"):
        s = getattr(ds, name)
        arrays[f"x_{name}"], arrays[f"y_{name}"] = s.x, s.y

    def write_npz(tmp: Path):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(out_dir / layout.DATASET, write_npz)
    save_json(out_dir / layout.INFO, ds.info.to_json())


def load_info(prepared_dir: str | Path = layout.PREPARED) -> DatasetInfo:
    path = Path(prepared_dir) / layout.INFO
    if not path.exists():
        raise ImpactXError(f"{path} not found: run the fetch_data stage first (dvc repro)")
    return DatasetInfo.from_json(json.loads(path.read_text()))


def load(prepared_dir: str | Path = layout.PREPARED) -> Dataset:
    prepared_dir = Path(prepared_dir)
    info = load_info(prepared_dir)
    if not (prepared_dir / layout.DATASET).exists():
        raise ImpactXError(f"{prepared_dir / layout.DATASET} not found: run the fetch_data stage first (dvc repro)")

    def splits_of(path: Path) -> dict[str, Split]:
        with np.load(path) as z:
            return {n: Split(z[f"x_{n}"], z[f"y_{n}"]) for n in ("train", "val", "test")}

    splits = read(prepared_dir / layout.DATASET, splits_of)
    return Dataset(splits["train"], splits["val"], splits["test"], info)


def to_float(x: np.ndarray) -> torch.Tensor:
    """uint8 images → float in [0, 1]; models normalise internally, so [0, 1] is their input everywhere."""
    return torch.from_numpy(x).float().div_(255.0)
