"""The comparison methods: ABN, WAE and the λ = 0 control, built from a baseline and saved/loaded."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from impactx import methods
from impactx.config import Params
from impactx.model import build_baseline
from impactx.wae import class_mean_maps

INFO = {"image_shape": [3, 32, 32], "classes": [str(i) for i in range(4)], "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    params = Params.model_validate({"impactx": {"latent_dim": 32}})
    path = tmp_path / "baseline.pt"
    torch.save(build_baseline(params.model, INFO).state_dict(), path)
    rng = np.random.default_rng(0)
    maps, labels = rng.standard_normal((12, 3, 32, 32)).astype(np.float32), rng.integers(0, 4, 12)
    batch = torch.rand(6, 3, 32, 32), torch.randint(0, 4, (6,)), torch.rand(6, 3, 32, 32)
    return params, path, maps, labels, batch


def train_one_step(model, step, batch):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = step(model, *batch)
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    return losses


@pytest.mark.parametrize("method", ["impactx", "impactx_lambda0", "abn", "wae"])
def test_every_method_explains_and_survives_save_and_load(setup, method, tmp_path):
    params, path, maps, labels, batch = setup
    model = methods.build(method, params, INFO, path, maps, labels)
    train_one_step(model, methods.step(method, params), batch)
    model.eval()
    logits, explanation = model.explain(batch[0])
    assert logits.shape == (6, 4) and explanation.shape == (6, 3, 32, 32)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    loaded = methods.load(method, params, INFO, tmp_path / "m.pt").eval()
    assert torch.allclose(loaded(batch[0]), logits, atol=1e-6)


def test_lambda0_control_is_impactx_without_the_map_loss(setup):
    params, path, maps, labels, batch = setup
    model = methods.build("impactx_lambda0", params, INFO, path, maps, labels)
    losses = methods.step("impactx_lambda0", params)(model, *batch)
    assert torch.equal(losses["loss"], losses["ce"]) and losses["mse"] > 0
    losses["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in model.decoder.parameters())  # D learns nothing
    full = methods.step("impactx", params)(model, *batch)
    assert torch.allclose(full["loss"], full["ce"] + params.impactx.lambda_ * full["mse"])


def test_abn_attention_weights_the_perception_branch(setup):
    params, path, maps, labels, batch = setup
    model = methods.build("abn", params, INFO, path, maps, labels).eval()
    x = batch[0]
    logits, att_logits, att = model.branches(x)
    g = model.backbone.stem(model.normalize(x))
    assert att.shape == (6, 1, *g.shape[2:]) and (att > 0).all() and (att < 1).all()
    assert torch.allclose(logits, model.backbone.head(model.backbone.trunk(g * (1 + att))))
    losses = methods.step("abn", params)(model, *batch)
    assert torch.allclose(losses["loss"], F.cross_entropy(logits, batch[1]) + F.cross_entropy(att_logits, batch[1]))
    _, explanation = model.explain(x)
    assert explanation.min() >= 0 and explanation.max() <= 1  # the attention map, upsampled


def test_wae_feeds_the_probability_weighted_class_mean_map(setup):
    params, path, maps, labels, batch = setup
    model = methods.build("wae", params, INFO, path, maps, labels)
    means = class_mean_maps(maps, labels, 4)
    for k in range(4):
        assert torch.allclose(means[k], torch.from_numpy(maps[labels == k].mean(0)))
    a_before = {k: v.clone() for k, v in model.a.state_dict().items()}
    train_one_step(model, methods.step("wae", params), batch)
    assert all(torch.equal(v, model.a.state_dict()[k]) for k, v in a_before.items())  # A stays frozen
    model.eval()
    x = batch[0]
    p = torch.softmax(model.a(model.normalize(x)), 1)
    _, e = model.explain(x)
    assert torch.allclose(e, torch.einsum("nk,kchw->nchw", p, means), atol=1e-6)
    assert not torch.equal(model.backbone.stem[0].weight, model.a.stem[0].weight)  # its own copy trained
