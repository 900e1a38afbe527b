import numpy as np
import pytest
import torch
import torch.nn.functional as F

from impactx.backbones import build_backbone
from impactx.methods.impactx import Decoder, ImpactX, _decoder_plan, impactx_loss, standardize
from impactx.model import Classifier


def make(size=32, k=10, c=3):
    base = Classifier(build_backbone("lenet5", c, k, size), [0.5] * c, [0.25] * c)
    return base, ImpactX(base, k, (c, size, size), latent_dim=512)


@pytest.mark.parametrize("size", [32, 96])
def test_shapes(size):
    base, model = make(size)
    x = torch.rand(4, 3, size, size)
    assert base(x).shape == (4, 10)
    z = model.lep(model.normalize(x))
    assert z.shape == (4, 512) and (z > 0).all() and (z < 1).all()
    logits, r_hat = model.explain(x)
    assert logits.shape == (4, 10) and r_hat.shape == x.shape
    assert r_hat.abs().max() <= 1
    assert torch.equal(model(x), logits)


def test_decoder_plan_matches_paper_layout():
    assert _decoder_plan(32) == (4, 3)
    assert _decoder_plan(96) == (3, 5)  # two more conv+upsample steps for STL-10
    assert Decoder(512, 3, 96)(torch.rand(2, 512)).shape == (2, 3, 96, 96)


def test_stage2_trains_lep_d_c_and_keeps_m_frozen():
    base, model = make()
    m_before = {k: v.clone() for k, v in model.m.state_dict().items()}
    lep_before = model.lep.stem[0].weight.clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    model.train()
    logits, r_hat = model.explain(x)
    loss, _, _ = impactx_loss(logits, y, r_hat, torch.rand_like(x), 1.0)
    loss.backward()
    opt.step()
    assert all(torch.equal(v, model.m.state_dict()[k]) for k, v in m_before.items())
    assert not torch.equal(lep_before, model.lep.stem[0].weight)
    assert model.lep.stem[0].weight is not model.m.stem[0].weight


def test_loss_is_ce_plus_lambda_mse():
    logits, y = torch.randn(5, 4), torch.randint(0, 4, (5,))
    pred, target = torch.rand(5, 3, 8, 8), torch.rand(5, 3, 8, 8)
    total, ce, mse = impactx_loss(logits, y, pred, target, 0.6)
    assert torch.allclose(ce, F.cross_entropy(logits, y))
    assert torch.allclose(mse, ((pred - target) ** 2).mean())
    assert torch.allclose(total, ce + 0.6 * mse)
    assert torch.allclose(impactx_loss(logits, y, pred, target, 0.0)[0], ce)


def test_pearson_map_loss_ignores_offset_and_scale():
    from impactx.methods.impactx import pearson_loss

    target = torch.rand(4, 3, 8, 8)
    assert pearson_loss(3 * target + 1, target) == pytest.approx(0, abs=1e-6)
    assert pearson_loss(-target, target) == pytest.approx(2, abs=1e-6)
    logits, y = torch.randn(4, 5), torch.randint(0, 5, (4,))
    total, ce, m = impactx_loss(logits, y, 2 * target, target, 0.5, "pearson")
    assert torch.allclose(total, ce) and m.abs() < 1e-6


@pytest.mark.parametrize("backbone,size", [("lenet5", 32), ("lenet5", 96), ("cnn3", 32)])
@pytest.mark.parametrize("skip", ["lep", "m"])
def test_spatial_decoder_gives_a_full_size_map_that_follows_the_image(backbone, size, skip):
    base = Classifier(build_backbone(backbone, 3, 10, size), [0.5] * 3, [0.25] * 3)
    model = ImpactX(base, 10, (3, size, size), latent_dim=32, decoder="spatial", decoder_skip=skip)
    x = torch.rand(2, 3, size, size)
    logits, r_hat = model.explain(x)
    assert logits.shape == (2, 10) and r_hat.shape == x.shape and r_hat.abs().max() <= 1
    # the same code z with another image's stem features and pixels gives another map: D reads the image
    _, (z, s, xn, _) = model._forward(x)
    swapped = model.decoder(z, s.flip(0), xn.flip(0))
    assert not torch.allclose(swapped, r_hat)


@pytest.mark.parametrize("skip", ["lep", "m"])
def test_spatial_decoder_trains_the_lep_and_keeps_m_frozen(skip):
    base = Classifier(build_backbone("lenet5", 3, 10, 32), [0.5] * 3, [0.25] * 3)
    model = ImpactX(base, 10, (3, 32, 32), latent_dim=32, decoder="spatial", decoder_skip=skip).train()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, r_hat = model.explain(x)
    _, _, m = impactx_loss(logits, y, r_hat, torch.rand_like(x), 1.0)
    m.backward()  # the map loss alone
    assert all(p.grad is None for p in model.m.parameters())
    lep_grad = model.lep.stem[0].weight.grad
    # the map reaches the LEP's stem through z, and (skip lep) through the skip connection too
    assert lep_grad is not None and lep_grad.abs().sum() > 0


@pytest.mark.parametrize("decoder", ["latent", "spatial"])
def test_class_prior_adds_a_learned_map_per_class_mixed_by_a(decoder):
    base = Classifier(build_backbone("lenet5", 3, 10, 32), [0.5] * 3, [0.25] * 3)
    model = ImpactX(base, 10, (3, 32, 32), latent_dim=32, decoder=decoder, decoder_prior="class").train()
    assert model.templates.shape == (10, 3, 32, 32)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with torch.no_grad():
        model.templates.copy_(torch.randn(10, 3, 32, 32))
        _, r_hat = model.explain(x)
        _, (z, s, xn, a) = model._forward(x)
        d = model.decoder(z, s, xn) if decoder == "spatial" else model.decoder(z)
        p = F.softmax(base.backbone(base.normalize(x)), dim=1)  # A's probabilities
        expected = d + (p[:, :, None, None, None] * model.templates).sum(1)
    assert torch.allclose(r_hat, expected, atol=1e-5)
    logits, r_hat = model.explain(x)
    _, _, m = impactx_loss(logits, y, r_hat, torch.rand_like(x), 1.0)
    m.backward()  # the map loss trains the templates, never M
    assert model.templates.grad.abs().sum() > 0 and all(q.grad is None for q in model.m.parameters())


def test_a_class_conv_is_the_convolution_with_each_images_class_kernel():
    from impactx.methods.impactx import ClassConv

    conv = ClassConv(6, 3, classes=4)
    h, k = torch.randn(5, 6, 8, 8), torch.tensor([2, 0, 3, 2, 1])
    expected = torch.cat([F.conv2d(h[i : i + 1], conv.weight[k[i]], conv.bias[k[i]], padding=1) for i in range(5)])
    assert torch.allclose(conv(h, k), expected, atol=1e-5)


@pytest.mark.parametrize("decoder", ["latent", "spatial"])
def test_a_per_class_head_gives_the_map_of_the_class_asked_and_trains_the_true_class(decoder):
    base = Classifier(build_backbone("lenet5", 3, 4, 32), [0.5] * 3, [0.25] * 3)
    model = ImpactX(base, 4, (3, 32, 32), latent_dim=16, decoder=decoder, decoder_prior="class",
                    decoder_output="per_class").train()  # fmt: skip
    maps, labels = torch.randn(12, 3, 32, 32), np.arange(12) % 4
    model.training_maps(maps, labels, seed=0)  # T_k: the class means; D starts at zero
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        logits, r = model.explain(x)  # the map of IMPACTX's own predicted class
        assert torch.allclose(r, model.templates[logits.argmax(1)], atol=1e-5)
        for k in range(4):  # any class, as SHAP is given one: its own map, not a mixture
            _, r_k = model.explain(x, torch.full((5,), k))
            assert torch.allclose(r_k, model.templates[k].expand(5, -1, -1, -1), atol=1e-5)
        torch.nn.init.normal_(model.decoder.last.weight)
        torch.nn.init.normal_(model.decoder.last.bias)
        _, (z, s, xn, _) = model._forward(x)
        y = torch.tensor([3, 0, 3, 0, 0])  # classes 1 and 2 are not asked for
        d = model.decoder(z, s, xn, y) if decoder == "spatial" else model.decoder(z, y)
        _, r_y = model.explain(x, y)
        assert torch.allclose(r_y, d + model.templates[y], atol=1e-5)
    target = torch.rand(5, 3, 32, 32)
    model.zero_grad()
    model.loss(x, y, target)["loss"].backward()  # the map loss reaches only the true classes' templates
    touched = model.templates.grad.flatten(1).abs().sum(1) > 0
    assert touched.tolist() == [k in y.tolist() for k in range(4)]


@pytest.mark.parametrize("target", ["max_abs", "standardize"])
def test_a_fresh_class_prior_starts_at_the_class_means_of_its_targets(target):
    base = Classifier(build_backbone("lenet5", 3, 4, 32), [0.5] * 3, [0.25] * 3)
    model = ImpactX(base, 4, (3, 32, 32), latent_dim=16, target=target, decoder_prior="class")
    maps, labels = torch.randn(12, 3, 32, 32), np.arange(12) % 4
    assert model.training_maps(maps, labels, seed=0) is maps
    t = standardize(maps) if target == "standardize" else maps
    expected = torch.stack([t[labels == k].mean(0) for k in range(4)])
    assert torch.allclose(model.templates, expected, atol=1e-5)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():  # D starts at zero: the first map is the prior alone, WAE's Σ_k p_k·S_k
        _, r_hat = model.explain(x)
        p = F.softmax(base.backbone(base.normalize(x)), dim=1)
    assert torch.allclose(r_hat, torch.einsum("nk,kchw->nchw", p, expected), atol=1e-5)
    with torch.no_grad():
        model.templates.mul_(2)  # a trained (or loaded) prior is left as it is
    model.training_maps(maps, labels, seed=0)
    assert torch.allclose(model.templates, 2 * expected, atol=1e-5)


def test_the_class_prior_is_not_weight_decayed_and_everything_else_is():
    from impactx.train import param_groups

    base = Classifier(build_backbone("lenet5", 3, 4, 32), [0.5] * 3, [0.25] * 3)
    model = ImpactX(base, 4, (3, 32, 32), latent_dim=16, decoder_prior="class")
    decayed, free = param_groups(model, 5e-4)
    assert free["weight_decay"] == 0 and len(free["params"]) == 1 and free["params"][0] is model.templates
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert decayed["weight_decay"] == 5e-4 and len(decayed["params"]) == len(trainable) - 1
    plain = ImpactX(base, 4, (3, 32, 32), latent_dim=16)
    assert len(param_groups(plain, 5e-4)) == 1  # no prior: one group, as before
