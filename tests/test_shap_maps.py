import numpy as np
import pytest
import torch

import shap
from impactx import ImpactXError, shap_maps
from impactx.backbones import build_backbone
from impactx.model import Classifier
from impactx.shap_maps import check_masker, compute_maps, scale_maps, shap_true_class

CPU = torch.device("cpu")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Classifier(build_backbone("lenet5", 3, 4, 16), [0.5] * 3, [0.25] * 3).eval()


def test_scale_maps_numpy_and_torch():
    maps = np.random.default_rng(0).normal(size=(3, 2, 4, 4)).astype(np.float32) * 1e-4
    maps[2] = 0
    for m in (maps, torch.from_numpy(maps)):
        s = np.asarray(scale_maps(m))
        assert np.allclose(np.abs(s[:2]).reshape(2, -1).max(1), 1.0)
        assert np.array_equal(np.sign(s), np.sign(maps)) and np.all(s[2] == 0)


def test_maps_sum_to_output_difference():
    """Efficiency: a map sums to p_y(x) − p_y(fully masked x), as shap's values do."""
    model = tiny_model()
    x = torch.rand(3, 3, 16, 16)
    y = np.array([0, 2, 3])
    maps = shap_true_class(model, x, y, max_evals=200, batch_size=100, masker="blur(4,4)", device=CPU)
    assert maps.shape == (3, 3, 16, 16) and maps.dtype == np.float32
    for i in range(3):
        hwc = x[i].permute(1, 2, 0).numpy()
        masker = shap.maskers.Image("blur(4,4)", shape=(16, 16, 3))  # fresh: its blur cache is keyed by id(x)
        bg = np.asarray(masker(np.zeros(16 * 16 * 3, bool), hwc)[0]).reshape(1, 16, 16, 3)
        with torch.no_grad():
            p = torch.softmax(model(torch.from_numpy(np.stack([hwc, bg[0]])).permute(0, 3, 1, 2).float()), 1)
        assert maps[i].sum() == pytest.approx(float(p[0, y[i]] - p[1, y[i]]), abs=1e-5)


def test_bad_masker():
    with pytest.raises(ImpactXError, match="unknown SHAP masker 'gauss'"):
        check_masker("gauss")


def test_shards_resume_to_identical_maps(tmp_path, monkeypatch):
    model = tiny_model()
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    y = np.array([0, 1, 2, 3, 0])
    kw = dict(max_evals=100, batch_size=50, masker="blur(4,4)", shard_size=2, seed=7, device=CPU)
    full, _ = compute_maps(model, x, y, work_root=tmp_path / "a", **kw)

    real, calls = shap_maps.shap_true_class, []

    def dies_on_second_shard(*a, **k):
        calls.append(1)
        if len(calls) == 2 and not resuming:
            raise SystemExit("killed")  # the run is killed mid-way
        return real(*a, **k)

    resuming = False

    monkeypatch.setattr(shap_maps, "shap_true_class", dies_on_second_shard)
    with pytest.raises(SystemExit):
        compute_maps(model, x, y, work_root=tmp_path / "b", **kw)
    work = next((tmp_path / "b").iterdir())
    assert sorted(p.name for p in work.iterdir()) == ["shard_00000.npy"]  # no half-written shard

    calls.clear()
    resuming = True
    resumed, _ = compute_maps(model, x, y, work_root=tmp_path / "b", **kw)
    assert len(calls) == 2  # only the two missing shards
    assert resumed.tobytes() == full.tobytes()
