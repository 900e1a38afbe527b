import numpy as np
import pytest
from conftest import patch_cifar_md5, write_cifar_archive, write_image_folder, write_stl10
from torchvision.datasets import CIFAR10, CIFAR100

from impactx import ImpactXError, data
from impactx.config import DataParams


def test_digits_is_embedded_split_and_seeded():
    p = DataParams(source="digits", val_fraction=0.1, test_fraction=0.2)
    a, b = data.prepare(p, seed=3), data.prepare(p, seed=3)
    assert a.train.x.dtype == np.uint8 and a.image_shape == (3, 32, 32)
    assert len(a.train.y) + len(a.val.y) + len(a.test.y) == 1797
    assert len(a.test.y) == round(0.2 * 1797)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert not np.array_equal(a.train.y, data.prepare(p, seed=4).train.y)


def test_save_and_load_roundtrip(tmp_path):
    ds = data.prepare(DataParams(source="digits", train_limit=50, test_limit=20), seed=0)
    data.save(ds, tmp_path)
    loaded = data.load(tmp_path)
    assert loaded.info == ds.info and ds.info.sizes == {"train": 50, "val": len(ds.val.y), "test": 20}
    assert ds.info.image_shape == (3, 32, 32) and ds.info.num_classes == 10 and ds.info.source == "digits"
    np.testing.assert_array_equal(loaded.test.x, ds.test.x)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("source,cls", [("cifar10", CIFAR10), ("cifar100", CIFAR100)])
def test_cifar_from_local_archive(tmp_path, monkeypatch, offline, source, cls):
    archive = write_cifar_archive(tmp_path, source)
    patch_cifar_md5(monkeypatch, cls, archive)
    ds = data.prepare(DataParams(source=source, root=str(tmp_path), val_fraction=0.2), seed=0)
    n_train = 30 if source == "cifar10" else 6  # 5 data batches of 6 vs one train file of 6
    assert ds.image_shape == (3, 32, 32)
    assert len(ds.train.y) + len(ds.val.y) == n_train and len(ds.test.y) == 6
    assert len(ds.classes) == (10 if source == "cifar10" else 100)


def test_cifar_pixels_keep_torchvision_layout(tmp_path, monkeypatch, offline):
    archive = write_cifar_archive(tmp_path, "cifar10")
    patch_cifar_md5(monkeypatch, CIFAR10, archive)
    ds = data.prepare(DataParams(source="cifar10", root=str(tmp_path), val_fraction=0.1), seed=0)
    test = CIFAR10(str(tmp_path), train=False)
    np.testing.assert_array_equal(ds.test.x, test.data.transpose(0, 3, 1, 2))


def test_cifar_offline_without_archive_names_file_and_root(tmp_path, offline):
    with pytest.raises(
        ImpactXError, match=r"cannot download cifar-10-python.tar.gz.*put cifar-10-python.tar.gz in data.root"
    ):
        data.prepare(DataParams(source="cifar10", root=str(tmp_path)), seed=0)


def test_cifar_missing_with_download_off(tmp_path):
    with pytest.raises(ImpactXError, match="not found and data.download is false"):
        data.prepare(DataParams(source="cifar100", root=str(tmp_path), download=False), seed=0)


def test_cifar_corrupt_archive(tmp_path, offline):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ImpactXError, match="corrupt"):
        data.prepare(DataParams(source="cifar10", root=str(tmp_path)), seed=0)


def test_stl10_binary(tmp_path, monkeypatch, offline):
    truth = write_stl10(tmp_path, monkeypatch)
    ds = data.prepare(DataParams(source="stl10", root=str(tmp_path), val_fraction=0.25), seed=0)
    assert ds.image_shape == (3, 96, 96) and ds.classes[0] == "stl0"
    np.testing.assert_array_equal(ds.test.x, truth["test"])
    np.testing.assert_array_equal(ds.test.y, truth["test_y"])
    assert len(ds.train.y) + len(ds.val.y) == 8


def test_image_folder_with_held_out_fraction(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=10)
    ds = data.prepare(DataParams(source="imagefolder", path=str(tmp_path / "imgs"), test_fraction=0.2), seed=0)
    assert ds.classes == ["cat", "dog", "frog"] and ds.image_shape == (3, 32, 32)
    assert len(ds.test.y) == 6 and len(ds.train.y) + len(ds.val.y) == 24


def test_image_folder_with_test_folder_and_resize(tmp_path):
    write_image_folder(tmp_path / "train", per_class=4, size=40)
    write_image_folder(tmp_path / "test", per_class=2, size=40, seed=1)
    p = DataParams(source="imagefolder", path=str(tmp_path / "train"), test_path=str(tmp_path / "test"), image_size=32)
    ds = data.prepare(p, seed=0)
    assert len(ds.test.y) == 6 and ds.image_shape == (3, 32, 32)


def test_an_all_grey_image_folder_stays_one_channel(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in ("a", "b"):
        (tmp_path / "grey" / k).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / "grey" / k / f"{i}.png")
    ds = data.prepare(DataParams(source="imagefolder", path=str(tmp_path / "grey")), seed=0)
    assert ds.image_shape == (1, 16, 16) and len(ds.info.mean) == 1
    first = np.asarray(Image.open(sorted((tmp_path / "grey" / "a").glob("*.png"))[0]))
    everything = np.concatenate([ds.train.x, ds.val.x, ds.test.x])[:, 0]
    assert any(np.array_equal(first, x) for x in everything)  # the pixels themselves, not a conversion


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImpactXError, match="no usable classes"):
        data.prepare(DataParams(source="imagefolder", path=str(tmp_path / "empty")), seed=0)
    with pytest.raises(ImpactXError, match="not found"):
        data.prepare(DataParams(source="imagefolder", path=str(tmp_path / "nope")), seed=0)
    with pytest.raises(ImpactXError, match="data.path is not set"):
        data.prepare(DataParams(source="imagefolder"), seed=0)
    write_image_folder(tmp_path / "mixed", classes=("x",), size=32)
    write_image_folder(tmp_path / "mixed", classes=("y",), size=28)
    with pytest.raises(ImpactXError, match="different sizes"):
        data.prepare(DataParams(source="imagefolder", path=str(tmp_path / "mixed")), seed=0)
    ds = data.prepare(DataParams(source="imagefolder", path=str(tmp_path / "mixed"), image_size=32), seed=0)
    assert ds.image_shape == (3, 32, 32)  # mixed sizes: each image resized as it is read
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ImpactXError, match="cannot read image"):
        data.prepare(DataParams(source="imagefolder", path=str(tmp_path / "bad")), seed=0)
