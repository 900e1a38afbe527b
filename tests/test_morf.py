import numpy as np
import pytest
import torch
from torch import nn

from impactx import ImpactXError
from impactx.morf import NOISE_STD, aopc, morf_curves, noisy_linear_impute, patch_relevance, removal_curves, srg


class TopLeftModel(nn.Module):
    """Class 0's logit depends only on the top-left 8×8 block's brightness: we know which pixels matter."""

    def forward(self, x):
        s = x[:, :, :8, :8].mean((1, 2, 3))
        return torch.stack([12 * (s - 0.5), torch.zeros_like(s)], 1)


def test_true_map_falls_faster_than_random():
    x = torch.full((6, 3, 16, 16), 0.2)
    x[:, :, :8, :8] = 1.0
    true_map = torch.zeros_like(x)
    true_map[:, :, :8, :8] = 1.0
    rand_map = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    kw = dict(patch_size=4, steps=8, device=torch.device("cpu"), seed=0)
    c_true, c_rand = morf_curves(TopLeftModel(), x, true_map, **kw), morf_curves(TopLeftModel(), x, rand_map, **kw)
    assert c_true.shape == (6, 9)
    assert np.allclose(c_true[:, 0], c_rand[:, 0])  # step 0 is the clean image
    assert c_true[:, 2].mean() < 0.5 < c_rand[:, 2].mean()  # 4 of 16 patches gone: the whole relevant block
    assert aopc(c_true) > aopc(c_rand) + 0.2


def test_patch_relevance_sums_patches():
    m = torch.zeros(1, 2, 8, 8)
    m[0, 1, 4:, :4] = 1.0
    assert patch_relevance(m, 4).tolist() == [[0.0, 0.0, 16.0, 0.0]]
    with pytest.raises(ImpactXError, match="does not divide"):
        patch_relevance(m, 3)


def test_lerf_is_the_reverse_path_and_srg_rewards_the_true_map():
    x = torch.full((6, 3, 16, 16), 0.2)
    x[:, :, :8, :8] = 1.0
    true_map = torch.zeros_like(x)
    true_map[:, :, :8, :8] = 1.0
    kw = {"patch_size": 4, "steps": 8, "device": torch.device("cpu"), "seed": 0}
    model = TopLeftModel()
    mo = removal_curves(model, x, true_map, order="morf", **kw)
    le = removal_curves(model, x, true_map, order="lerf", **kw)
    assert np.allclose(mo[:, 0], le[:, 0]) and np.allclose(mo[:, -1], le[:, -1])  # nothing / everything removed
    assert le[:, 6].min() > 0.99  # the 12 irrelevant patches go first: the class stays
    assert srg(mo, le) > 0.3  # the class falls from ~1 to ~0.5 two steps in on MoRF, six steps later on LeRF
    rand = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    assert srg(mo, le) > srg(
        removal_curves(model, x, rand, order="morf", **kw), removal_curves(model, x, rand, order="lerf", **kw)
    )
    with pytest.raises(ImpactXError, match="evaluate.removal"):
        removal_curves(model, x, true_map, removal="blur", **kw)


def test_noisy_linear_imputation_solves_roads_neighbour_system():
    """Each removed pixel equals the weighted mean of its neighbours (1/6 direct, 1/12 diagonal, inside the
    image): checked against a direct sparse solve of that system, before the noise."""
    from scipy.sparse import lil_matrix
    from scipy.sparse.linalg import spsolve

    rng = np.random.default_rng(0)
    h = w = 8
    x = torch.from_numpy(rng.random((2, 3, h, w)).astype(np.float64))
    removed = torch.from_numpy(rng.random((2, 1, h, w)) < 0.5)
    removed[1] = True  # nothing known: grey
    gen = torch.Generator().manual_seed(0)
    out = noisy_linear_impute(x, removed, gen, tol=1e-10)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).double() * NOISE_STD
    got = (out - noise)[0]
    assert torch.equal(out[0][:, ~removed[0, 0]], x[0][:, ~removed[0, 0]])  # known pixels kept
    assert torch.allclose((out - noise)[1], torch.full((3, h, w), 0.5, dtype=torch.float64), atol=1e-12)
    cells = [(i, j) for i in range(h) for j in range(w) if removed[0, 0, i, j]]
    pos = {c: k for k, c in enumerate(cells)}
    a, b = lil_matrix((len(cells), len(cells))), np.zeros((len(cells), 3))
    for (i, j), k in pos.items():
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ni, nj = i + di, j + dj
                if (di, dj) == (0, 0) or not (0 <= ni < h and 0 <= nj < w):
                    continue
                wgt = 1 / 12 if di and dj else 1 / 6
                a[k, k] += wgt
                if (ni, nj) in pos:
                    a[k, pos[(ni, nj)]] -= wgt
                else:
                    b[k] += wgt * x[0, :, ni, nj].numpy()
    direct = spsolve(a.tocsc(), b)
    ours = np.stack([got[:, i, j].numpy() for i, j in cells])
    clipped = (direct + noise[0].numpy()[:, [c[0] for c in cells], [c[1] for c in cells]].T).clip(0, 1) - noise[
        0
    ].numpy()[:, [c[0] for c in cells], [c[1] for c in cells]].T
    assert np.allclose(ours, clipped, atol=1e-6)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_removal_curves_agree_with_quantus_region_perturbation(order):
    """Quantus's RegionPerturbation (Samek et al.) removes one patch per step; with steps = patches, the
    same patches and the same replacement values, its scores are p(x) − p(x_k) of our curve, so our AOPC is
    its mean over steps 1..P with step 0 (no change) counted."""
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    )
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    maps = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    ours = removal_curves(model, x, maps, patch_size=4, steps=16, device=torch.device("cpu"), seed=3, order=order)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)).numpy().reshape(5, -1)  # our noise

    def replace_with_our_noise(arr, indices, **_):
        out, rows = arr.copy(), np.arange(len(arr))[:, None]
        out[rows, indices] = noise[rows, indices]
        return out

    metric = quantus.RegionPerturbation(patch_size=4, order=order, regions_evaluation=16, normalise=False,
                                        perturb_func=replace_with_our_noise, disable_warnings=True)  # fmt: skip
    pred = model(x).argmax(1).numpy()
    scores = np.asarray(metric(model=model.eval(), x_batch=x.numpy(), y_batch=pred, a_batch=maps.numpy(),
                               channel_first=True, device="cpu", softmax=True))  # fmt: skip
    assert scores.shape == (5, 16)
    assert np.allclose(ours[:, :1] - ours[:, 1:], scores, atol=1e-6)
    assert aopc(ours) == pytest.approx(scores.sum(1).mean() / 17, abs=1e-6)
