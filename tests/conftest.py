"""Shared test builders: tiny models and data in the real on-disk formats, written by the tests themselves
(no network, no ../shared), and tiny copies of the project for end-to-end runs."""

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from impactx.backbones import build_backbone
from impactx.data import DatasetInfo
from impactx.model import Classifier

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per xdist worker, and per stage process it starts (they inherit the environment): with
    # as many workers as cores, torch's default threads would oversubscribe them, several times slower.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    torch.set_num_threads(1)
TRACKED = [
    "dvc.yaml",
    "params.yaml",
    "stages",
    "impactx",
    "flows",
    ".dvc/config",
    ".dvc/plots",
    ".dvcignore",
    ".gitignore",
]
TINY = {
    "seeds": [0, 1],
    "data": {"train_limit": 96, "test_limit": 48},
    "baseline": {"epochs": 2, "batch_size": 32},
    "attribution": {"batch_size": 64, "shap_partition": {"max_evals": 64}},
    "shards": {"size": 32},
    "impactx": {"epochs": 2, "batch_size": 32, "latent_dim": 64},
    "abn": {"epochs": 2, "batch_size": 32},
    "wae": {"epochs": 2, "batch_size": 32},
    "evaluate": {"morf_images": 8, "steps": 4, "shap_max_evals": 64, "figure_images": 2},
}
CPU = torch.device("cpu")


def tiny_info(classes: int = 4, size: int = 32, channels: int = 3) -> DatasetInfo:
    """A dataset description for models built without data."""
    return DatasetInfo("toy", [str(i) for i in range(classes)], (channels, size, size), [0.5] * channels,
                       [0.25] * channels, {"train": 0, "val": 0, "test": 0})  # fmt: skip


def shap_spec(max_evals: int = 100, masker: str = "blur(4,4)", batch_size: int = 50, pool_size: int = 16):
    """Partition SHAP's Spec, as params.yaml's attribution section would make it."""
    from impactx.attribution import Spec
    from impactx.attribution.shap_partition import ShapPartitionSettings

    return Spec(
        "shap_partition", ShapPartitionSettings(max_evals=max_evals, masker=masker, pool_size=pool_size), batch_size
    )


def tiny_model(seed: int = 0, size: int = 16, classes: int = 4) -> Classifier:
    """A seeded LeNet-5 classifier A on size×size RGB images."""
    torch.manual_seed(seed)
    return Classifier(build_backbone("lenet5", 3, classes, size), [0.5] * 3, [0.25] * 3).eval()


def run(cmd, cwd, check=True):
    """A command in a project copy, with this venv's `python` and `dvc` first on PATH."""
    env = {
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        **os.environ,
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and p.returncode:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def tiny_project(root: Path, **overrides) -> Path:
    """A git + DVC copy of the repo at `root` with params small enough for a whole DAG in about a minute;
    `overrides` ({"model": {"backbone": ...}, "seeds": [0]}) are applied after TINY."""
    for name in TRACKED:
        src, dst = REPO / name, root / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    set_params(root, **TINY)
    set_params(root, **overrides)
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny"], root)
    return root


def set_params(root: Path, **overrides) -> None:
    """Update params.yaml of a project copy: a dict value updates its section, anything else replaces."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in overrides.items():
        if isinstance(value, dict):
            params.setdefault(key, {}).update(value)
        else:
            params[key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_cifar_archive(root: Path, flavour: str, n_per_batch: int = 6, seed: int = 0) -> Path:
    """A tiny cifar-10-python.tar.gz / cifar-100-python.tar.gz laid out exactly like the official one."""
    rng = np.random.default_rng(seed)
    build = root / "build"
    if flavour == "cifar10":
        folder, names, label_key, meta_key = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
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


@pytest.fixture(autouse=True)
def no_inherited_tracking_uri(monkeypatch):
    """mlflow.set_tracking_uri copies its URI into os.environ, where the stages read a user's
    MLFLOW_TRACKING_URI: one test's store must not become the next test's stages' store. Removed again after
    the test too: monkeypatch restores only what it changed, and a module-scoped project is built before the
    next test's function fixtures run (its stages logged to the previous test's store)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for the whole session, started only when a test asks for it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def offline(monkeypatch):
    """Any torchvision download raises as it does on a machine with no network."""
    import urllib.error

    from torchvision.datasets import cifar, stl10

    def fail(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", fail)
    monkeypatch.setattr(stl10, "download_and_extract_archive", fail)


# The longest files first: with `pytest -n auto --dist loadfile` a worker takes a whole file, so starting
# the longest chains early keeps the other workers busy with the short files meanwhile.
LONGEST_FIRST = ("test_pipeline.py", "test_flows.py", "test_faults.py", "test_tracking.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """An MLflow tracking server on 127.0.0.1 as the docs start one (a sqlite backend, an artifact root it
    serves); yields its URI, the database and the artifact folder."""
    import time
    import urllib.request

    db, artifacts, port = tmp_path / "server" / "mlflow.db", tmp_path / "server" / "artifacts", free_port()
    artifacts.mkdir(parents=True)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(artifacts), "--workers", "1"]  # fmt: skip
    log = open(tmp_path / "server" / "log.txt", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server" / "log.txt").read_text()[-2000:]
                time.sleep(0.5)
        else:
            raise TimeoutError("mlflow server did not answer /health in 120 s")
        yield uri, db, artifacts
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
