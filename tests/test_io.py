"""impactx.io: atomic writes leave whole files with the mode a user expects."""

import os

import pytest

from impactx.io import atomic_write, save_json


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_json(tmp_path / "out.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\n")
    path.chmod(0o640)
    atomic_write(path, lambda t: t.write_text("seed: 1\n"))
    assert path.read_text() == "seed: 1\n" and path.stat().st_mode & 0o777 == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "dvc.lock"
    path.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert [p.name for p in tmp_path.iterdir()] == ["dvc.lock"] and path.read_text() == "old"


def test_a_damaged_file_a_stage_reads_is_one_line_naming_the_fix(tmp_path):
    """A truncated dataset.npz (BadZipFile) or checkpoint (torch's reader error), or a foreign file, under
    a targeted repro: one line with `dvc checkout`, which a stage turns into exit 2, not a traceback."""
    import numpy as np
    import torch

    from impactx import ImpactXError, methods
    from impactx.io import load_checkpoint, read, save_npz, save_torch

    save_npz(tmp_path / "dataset.npz", x_train=np.zeros((50, 3, 8, 8), np.uint8))
    save_torch(tmp_path / "seed0.pt", {"state_dict": {"w": torch.ones(1000)}, "training": {"best_epoch": 3}})
    assert methods.training_of(tmp_path / "seed0.pt") == {"best_epoch": 3}
    for name, load in (("dataset.npz", lambda p: np.load(p)["x_train"]), ("seed0.pt", load_checkpoint)):
        path = tmp_path / name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImpactXError, match=rf"{name} is damaged .*dvc checkout .*{name}") as e:
            read(path, load)
        assert "\n" not in str(e.value)
    with pytest.raises(ImpactXError, match="seed0.pt is damaged"):
        methods.training_of(tmp_path / "seed0.pt")
    (tmp_path / "seed0.pt").write_text("not a checkpoint")
    with pytest.raises(ImpactXError, match="seed0.pt is damaged"):
        read(tmp_path / "seed0.pt", load_checkpoint)
