import numpy as np
import pytest
import torch
from torch import nn

from impactx import ImpactXError
from impactx.morf import aopc, morf_curves, patch_relevance


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
