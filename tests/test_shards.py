"""Partition SHAP equals shap's own explainer, and the shard engine resumes, fans out and reuses maps."""

import json

import numpy as np
import pytest
import shap
import torch
from conftest import CPU, shap_spec, tiny_model

from impactx import ImpactXError, attribution, shards
from impactx.attribution.shap_partition import check_masker, shap_true_class
from impactx.maps import scale_maps
from impactx.params import parse_params
from impactx.shards import compute_maps, local_runner


def partition_shap(model, x, y, *, max_evals, batch_size, masker, seed=0, pool=16, first_index=0, device=CPU):
    spec = shap_spec(max_evals, masker, batch_size, pool)
    return attribution.attribute(model, x, y, spec, seed=seed, first_index=first_index, device=device)


def test_scale_maps_numpy_and_torch():
    maps = np.random.default_rng(0).normal(size=(3, 2, 4, 4)).astype(np.float32) * 1e-4
    maps[2] = 0
    for m in (maps, torch.from_numpy(maps)):
        s = np.asarray(scale_maps(m))
        assert np.allclose(np.abs(s[:2]).reshape(2, -1).max(1), 1.0)
        assert np.array_equal(np.sign(s), np.sign(maps)) and np.all(s[2] == 0)


def fully_masked_output(model, x, y, masker):
    """p_y(x) − p_y(background) with shap's own Image masker: what a map must sum to."""
    c, h, w = x.shape
    hwc = x.permute(1, 2, 0).numpy()
    bg = np.asarray(shap.maskers.Image(masker, shape=(h, w, c))(np.zeros(h * w * c, bool), hwc)[0])
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(np.stack([hwc, bg.reshape(h, w, c)])).permute(0, 3, 1, 2)), 1)
    return float(p[0, y] - p[1, y])


@pytest.mark.parametrize("masker", ["blur(4,4)", "inpaint_telea"])
def test_partition_shap_equals_shap(masker):
    """Same values as shap.PartitionExplainer. batch_size 64 < max_evals forces several rounds that pop only
    the best nodes, and pool 2 < 5 images makes finished images hand their slot to the next. Ties: both
    sides draw from np.random seeded with [seed, image index] (shap_true_class seeds np.random so)."""
    model = tiny_model()
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (5, 3, 16, 16)).astype(np.float32) / 255)
    y = np.array([0, 1, 2, 3, 1])
    kw = dict(max_evals=300, batch_size=64, masker=masker, seed=3)
    reference = shap_true_class(model, x, y, device=CPU, **kw)
    ours = partition_shap(model, x, y, pool=2, device=CPU, **kw)
    assert ours.shape == (5, 3, 16, 16) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()
    if masker.startswith("blur"):  # inpainting of a fully masked image is its mean colour, not a blur
        for i in range(5):
            expected = fully_masked_output(model, x[i], y[i], masker)
            assert ours[i].sum() == pytest.approx(expected, abs=1e-6)
            assert reference[i].sum() == pytest.approx(expected, abs=1e-6)


def test_partition_shap_first_index_makes_shards_independent():
    model = tiny_model()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = np.array([0, 1, 2, 3])
    kw = dict(max_evals=120, batch_size=32, masker="blur(4,4)", device=CPU)
    whole = partition_shap(model, x, y, **kw)
    tail = partition_shap(model, x[2:], y[2:], first_index=2, **kw)
    np.testing.assert_allclose(tail, whole[2:], rtol=0, atol=1e-6 * np.abs(whole).max())


def test_bad_masker():
    with pytest.raises(ImpactXError, match="unknown SHAP masker 'gauss'"):
        check_masker("gauss")


def test_shards_resume_to_identical_maps(tmp_path, monkeypatch):
    model = tiny_model()
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    y = np.array([0, 1, 2, 3, 0])
    kw = dict(shard_size=2, seed=7, device=CPU)
    full, _ = compute_maps(model, x, y, shap_spec(), work_root=tmp_path / "a", **kw)

    real, calls = shards.attribute, []

    def dies_on_second_shard(*a, **k):
        calls.append(1)
        if len(calls) == 2 and not resuming:
            raise SystemExit("killed")  # the run is killed mid-way
        return real(*a, **k)

    resuming = False

    monkeypatch.setattr(shards, "attribute", dies_on_second_shard)
    with pytest.raises(SystemExit):
        compute_maps(model, x, y, shap_spec(), work_root=tmp_path / "b", **kw)
    work = next((tmp_path / "b").iterdir())
    assert sorted(p.name for p in work.iterdir()) == ["owner.json", "shard_00000.npy"]  # no half-written shard

    calls.clear()
    resuming = True
    resumed, _ = compute_maps(model, x, y, shap_spec(), work_root=tmp_path / "b", **kw)
    assert len(calls) == 2  # only the two missing shards
    assert resumed.tobytes() == full.tobytes()


def test_worker_processes_give_the_same_maps(tmp_path):
    model = tiny_model()
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    y = np.array([0, 1, 2, 3])
    kw = dict(shard_size=2, seed=0, device=CPU)
    one, _ = compute_maps(model, x, y, shap_spec(), work_root=tmp_path / "a", **kw)
    two, _ = compute_maps(model, x, y, shap_spec(), work_root=tmp_path / "b", runner=local_runner(workers=2), **kw)
    assert one.tobytes() == two.tobytes()


def test_an_abandoned_run_of_the_same_seed_is_removed_and_other_seeds_are_kept(tmp_path):
    model = tiny_model()
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    y = np.array([0, 1, 2, 3])
    kw = dict(shard_size=2, device=CPU, work_root=tmp_path)
    _, old = compute_maps(model, x, y, shap_spec(100), seed=0, **kw)  # then max_evals changed: never resumed
    _, other_seed = compute_maps(model, x, y, shap_spec(100), seed=1, **kw)  # another seed's stage, maybe running
    foreign = tmp_path / "not_ours"
    foreign.mkdir()
    _, new = compute_maps(model, x, y, shap_spec(120), seed=0, **kw)
    assert not old.exists() and new.exists() and other_seed.exists() and foreign.exists()


def test_maps_with_the_same_fingerprint_are_reused_not_computed(tmp_path):
    """A teacher's maps are the same for every seed: the second seed's stage reads the first's."""
    model, other = tiny_model(), tiny_model(seed=1)  # other weights: another fingerprint
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    y = np.array([0, 1, 2, 3])
    kw = dict(spec=shap_spec(), shard_size=2, seed=0, device=CPU, work_root=tmp_path / "w")
    first, work = compute_maps(model, x, y, **kw)
    done = tmp_path / "seed0"
    done.mkdir()
    np.save(done / "maps.npy", first)
    (done / "maps.json").write_text(json.dumps({"fingerprint": work.name}))

    def never(jobs, on_done, progress):
        raise AssertionError("computed maps it could reuse")

    reused, again = compute_maps(
        model, x, y, runner=never, reuse=[tmp_path / "nope" / "maps.json", done / "maps.json"], **kw
    )
    assert again.name == work.name and shards.fingerprint(done / "maps.json") == work.name
    assert not again.exists()  # no work folder: how the stage tells a reuse from a computation
    assert reused.tobytes() == first.tobytes()
    computed = []
    _, third = compute_maps(other, x, y, runner=lambda jobs, *a: computed.append(len(jobs)) or local_runner()(jobs, *a),
                            reuse=[done / "maps.json"], **kw)  # fmt: skip
    assert computed == [2] and third.name != work.name
    with pytest.raises(AssertionError, match="computed maps it could reuse"):  # other images: no match either
        compute_maps(model, x[::-1].copy(), y, runner=never, reuse=[done / "maps.json"], **kw)


def test_a_teachers_maps_take_the_data_seed_so_every_replicate_shares_them():
    from impactx.attribution import map_seed

    own = parse_params({"seed": 3})
    teacher = parse_params({"seed": 3, "attribution": {"teacher": "models:/t/1"}})
    assert [map_seed(own, s) for s in (0, 1, 2)] == [0, 1, 2]
    assert [map_seed(teacher, s) for s in (0, 1, 2)] == [3, 3, 3]
