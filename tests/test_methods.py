"""The method registry: every entry builds from stage 1, owns its loss and its map, and survives a
checkpoint; the λ = 0 control is IMPACTX with a fixed setting; ABN and WAE do what their modules say."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_info

from impactx import ImpactXError, methods
from impactx.config import TrainingParams
from impactx.data import Split
from impactx.maps import class_mean_maps
from impactx.methods import Stage1
from impactx.params import parse_params
from impactx.train import Step, train_model

INFO = tiny_info()


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    params = parse_params({"impactx": {"latent_dim": 32}})
    path = tmp_path / "baseline.pt"
    methods.save(path, "baseline", params.baseline, methods.build("baseline", Stage1(INFO, params.model), params))
    rng = np.random.default_rng(0)
    maps, labels = rng.standard_normal((12, 3, 32, 32)).astype(np.float32), rng.integers(0, 4, 12)
    batch = torch.rand(6, 3, 32, 32), torch.randint(0, 4, (6,)), torch.rand(6, 3, 32, 32)
    return params, Stage1(INFO, params.model, path, maps, labels), batch


def train_one_step(model, batch):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = model.loss(*batch)
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    return losses


def test_registry_holds_every_row():
    controls = ["impactx_lambda0", "impactx_shuffled_all", "impactx_shuffled_class"]
    assert methods.names() == ["baseline", "abn", "impactx", *controls, "wae"]
    assert methods.names(controls=False) == ["abn", "impactx", "wae"]
    assert methods.names(controls=True) == controls
    control = methods.get("impactx_lambda0")
    assert (control.section, control.control_of, control.fixed) == ("impactx", "impactx", {"lambda_": 0.0})
    assert methods.get("baseline").post_hoc and methods.get("baseline").section == "baseline"
    params = parse_params({"methods": ["wae", "impactx"], "controls": ["impactx_lambda0"]})
    assert methods.rows(params) == ["baseline", "wae", "impactx", "impactx_lambda0"]
    with pytest.raises(ImpactXError, match="unknown method 'gradcam'"):
        methods.get("gradcam")


@pytest.mark.parametrize("name", ["impactx", "impactx_lambda0", "impactx_shuffled_class", "abn", "wae"])
def test_every_method_explains_and_survives_its_checkpoint(setup, name, tmp_path):
    params, stage1, batch = setup
    method = methods.get(name)
    model = methods.build(name, stage1, params)
    train_one_step(model, batch)
    model.eval()
    logits, explanation = model.explain(batch[0])
    assert logits.shape == (6, 4) and explanation.shape == (6, 3, 32, 32)
    methods.save(tmp_path / "m.pt", name, method.settings(params), model)
    loaded_method, loaded = methods.load(tmp_path / "m.pt", INFO, params.model)
    assert loaded_method is method
    assert torch.allclose(loaded.eval()(batch[0]), logits, atol=1e-6)
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    assert ckpt["method"] == name and ckpt["settings"]["latent_dim" if "impactx" in name else "epochs"]


def test_lambda0_control_is_impactx_without_the_map_loss(setup):
    params, stage1, batch = setup
    control = methods.get("impactx_lambda0")
    assert control.settings(params).lambda_ == 0.0 and params.impactx.lambda_ == 1.0
    assert control.settings(params).model_dump(exclude={"lambda_"}) == params.impactx.model_dump(exclude={"lambda_"})
    model = methods.build("impactx_lambda0", stage1, params)
    losses = model.loss(*batch)
    assert torch.equal(losses["loss"], losses["ce"]) and losses["mse"] > 0
    losses["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in model.decoder.parameters())  # D learns nothing
    full = methods.build("impactx", stage1, params).loss(*batch)
    assert torch.allclose(full["loss"], full["ce"] + params.impactx.lambda_ * full["mse"])


def test_shuffled_controls_pair_each_image_with_another_images_map(setup):
    params, stage1, _ = setup
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 1, 2])
    maps = torch.arange(12.0).view(12, 1, 1, 1).expand(12, 3, 32, 32)  # map i holds the value i
    for name, same_class in (("impactx_shuffled_class", True), ("impactx_shuffled_all", False)):
        control = methods.get(name)
        settings = control.settings(params)
        assert settings.lambda_ == params.impactx.lambda_  # the map loss stays on, at IMPACTX's λ
        paired = methods.build(name, stage1, params).training_maps(maps, labels, seed=0)
        source = paired[:, 0, 0, 0].long().numpy()
        assert sorted(source) == list(range(12)) and (source != np.arange(12)).all()  # a permutation, no image kept
        assert (labels[source] == labels).all() == same_class  # within class: always its class; across: not always
        again = methods.build(name, stage1, params).training_maps(maps, labels, seed=0)
        assert torch.equal(paired, again) and not torch.equal(paired, methods.build(name, stage1, params)
                                                              .training_maps(maps, labels, seed=1))  # fmt: skip
    assert methods.build("impactx", stage1, params).training_maps(maps, labels, seed=0) is maps  # its own maps


def test_the_two_readings_lep_start_and_classifier_input(setup):
    params, stage1, batch = setup
    torch.manual_seed(3)
    a0 = stage1.baseline(trained=False).backbone  # A's seeded initial weights, as stage 1 drew them
    torch.manual_seed(3)
    initial = methods.get("impactx").build(stage1, params.impactx.model_copy(update={"lep_init": "initial"}))
    trained = methods.build("impactx", stage1, params)
    for name, w in initial.lep.stem.state_dict().items():
        assert torch.equal(w, a0.stem.state_dict()[name])
        assert not torch.equal(w, trained.m.stem.state_dict()[name])  # not A's trained weights
    assert torch.equal(trained.lep.stem[0].weight, trained.m.stem[0].weight)  # the default: a copy of A
    pen = methods.get("impactx").build(stage1, params.impactx.model_copy(update={"classifier_input": "penultimate"}))
    assert pen.c[0].in_features == pen.m.head.in_features + 32 and trained.c[0].in_features == 4 + 32
    assert pen.explain(batch[0])[0].shape == (6, 4)
    train_one_step(pen, batch)
    with pytest.raises(ValueError, match="single_stage trains M on its logits"):
        params.impactx.model_validate(params.impactx.model_dump(by_alias=True) | {
            "training": "single_stage", "classifier_input": "penultimate"})  # fmt: skip


def test_abn_attention_weights_the_perception_branch(setup):
    params, stage1, batch = setup
    model = methods.build("abn", stage1, params).eval()
    x = batch[0]
    logits, att_logits, att = model.branches(x)
    g = model.backbone.stem(model.normalize(x))
    assert att.shape == (6, 1, *g.shape[2:]) and (att > 0).all() and (att < 1).all()
    assert torch.allclose(logits, model.backbone.head(model.backbone.trunk(g * (1 + att))))
    losses = model.loss(*batch)
    assert torch.allclose(losses["loss"], F.cross_entropy(logits, batch[1]) + F.cross_entropy(att_logits, batch[1]))
    _, explanation = model.explain(x)
    assert explanation.min() >= 0 and explanation.max() <= 1  # the attention map, upsampled


def test_wae_feeds_the_probability_weighted_class_mean_map(setup):
    params, stage1, batch = setup
    model = methods.build("wae", stage1, params)
    means = class_mean_maps(stage1.maps, stage1.labels, 4)
    for k in range(4):
        assert torch.allclose(means[k], torch.from_numpy(stage1.maps[stage1.labels == k].mean(0)))
    a_before = {k: v.clone() for k, v in model.a.state_dict().items()}
    train_one_step(model, batch)
    assert all(torch.equal(v, model.a.state_dict()[k]) for k, v in a_before.items())  # A stays frozen
    model.eval()
    x = batch[0]
    p = torch.softmax(model.a(model.normalize(x)), 1)
    _, e = model.explain(x)
    assert torch.allclose(e, torch.einsum("nk,kchw->nchw", p, means), atol=1e-6)
    assert not torch.equal(model.backbone.stem[0].weight, model.a.stem[0].weight)  # its own copy trained


@pytest.mark.parametrize("backbone", ["cnn3", "mobilenet_v2", "efficientnet_b2", "tf_efficientnet_b2"])
def test_every_method_on_the_other_backbones(tmp_path, backbone):
    """Each method builds, trains a step, explains and reloads on cnn3 and the pretrained cells' backbones
    (torchvision's and timm's, no weights)."""
    torch.manual_seed(0)
    params = parse_params({"model": {"backbone": backbone}, "impactx": {"latent_dim": 16}})
    path = tmp_path / "baseline.pt"
    methods.save(path, "baseline", params.baseline, methods.build("baseline", Stage1(INFO, params.model), params))
    maps, labels = np.zeros((4, 3, 32, 32), np.float32), np.arange(4)
    batch = torch.rand(4, 3, 32, 32), torch.arange(4), torch.rand(4, 3, 32, 32)
    for name in methods.names(controls=False):
        method = methods.get(name)
        model = methods.build(name, Stage1(INFO, params.model, path, maps, labels), params)
        train_one_step(model, batch)
        logits, explanation = model.eval().explain(batch[0])
        assert logits.shape == (4, 4) and explanation.shape == (4, 3, 32, 32), name
        methods.save(tmp_path / f"{name}.pt", name, method.settings(params), model)
        _, loaded = methods.load(tmp_path / f"{name}.pt", INFO, params.model)
        assert torch.allclose(loaded.eval()(batch[0]), logits, atol=1e-5), name


def test_checkpoints_of_the_same_weights_are_the_same_bytes(setup, tmp_path):
    params, stage1, _ = setup
    model = methods.build("impactx", stage1, params)
    settings = methods.get("impactx").settings(params)
    methods.save(tmp_path / "a.pt", "impactx", settings, model)
    methods.save(tmp_path / "b.pt", "impactx", settings, model)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()  # DVC sees no change


def test_single_stage_trains_m_and_refreshes_the_maps_from_it(setup):
    params, stage1, _ = setup
    rng = np.random.default_rng(0)
    split = lambda n: Split(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 4, n))  # noqa: E731
    train, val = split(12), split(6)
    results = {}
    for training in ("two_stage", "single_stage"):
        settings = params.impactx.model_copy(update={"training": training, "epochs": 4, "refresh_every": 2,
                                                     "refresh_method": "deeplift", "batch_size": 6})  # fmt: skip
        model = methods.get("impactx").build(stage1, settings)
        m0 = {k: v.clone() for k, v in model.m.state_dict().items()}
        maps = torch.from_numpy(stage1.maps.copy())
        results[training] = train_model(model, train, val, settings, torch.device("cpu"), seed=0, maps=maps)
        moved = any(not torch.equal(m0[k], v) for k, v in model.m.state_dict().items())
        assert moved == (training == "single_stage")  # M frozen in two-stage training, trained in single-stage
        refreshed = [i + 1 for i, h in enumerate(results[training]["history"]) if "refresh_seconds" in h]
        assert refreshed == ([3] if training == "single_stage" else [])  # epochs 1 + k·refresh_every
        if training == "single_stage":  # the loader's maps are now scaled DeepLift maps of the current A
            assert not np.allclose(maps.numpy(), stage1.maps) and maps.abs().amax((1, 2, 3)).allclose(torch.ones(12))
    lam0 = methods.get("impactx_lambda0")
    control = lam0.build(
        stage1, lam0.settings(params).model_copy(update={"training": "single_stage", "refresh_every": 2})
    )
    assert (
        control.lam == 0
        and control.refresh_maps(3, torch.rand(2, 3, 32, 32), np.zeros(2, int), torch.device("cpu")) is None
    )  # λ = 0


def steps(name, setup, engine, n=2):
    """n training steps of a fresh `name` through train.Step(engine): each step's losses, and the first
    step's gradients (Adam's steps would magnify rounding in near-zero gradients into ±lr)."""
    params, stage1, batch = setup
    torch.manual_seed(1)
    model = methods.build(name, stage1, params)
    step = Step(model, engine, torch.device("cpu"))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    out, grads = [], None
    for _ in range(n):
        losses = step(*batch)
        opt.zero_grad()
        losses["loss"].backward()
        if grads is None:
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        opt.step()
        out.append({k: float(v.detach()) for k, v in losses.items()})
    return out, grads


@pytest.mark.parametrize("name", ["baseline", "impactx", "abn", "wae"])
def test_every_method_trains_in_bfloat16_and_channels_last_close_to_float32(setup, name):
    exact, _ = steps(name, setup, TrainingParams())
    fast, _ = steps(name, setup, TrainingParams(dtype="bfloat16", channels_last=True))
    for e, f in zip(exact, fast, strict=True):
        assert f["loss"] == pytest.approx(e["loss"], rel=5e-2)


@pytest.mark.parametrize("name", ["baseline", "impactx"])  # cross-entropy alone; with the decoder's map loss
def test_a_compiled_training_step_equals_eager_to_rounding(setup, name, tmp_path, monkeypatch):
    """The training step as params.yaml's `training.compile` runs it: the losses of each step and the
    first step's gradients equal eager float32's to rounding. (abn and wae pass this too, checked by hand;
    their compiles take about 25 s each here, so the suite leaves them out.)"""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    exact, g_exact = steps(name, setup, TrainingParams())
    torch._dynamo.reset()
    counters.clear()
    compiled, g_compiled = steps(name, setup, TrainingParams(compile=True))
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile (no silent eager fallback)
    for e, c in zip(exact, compiled, strict=True):
        assert c == pytest.approx(e, rel=1e-4, abs=1e-6)
    assert torch.allclose(g_compiled, g_exact, rtol=1e-3, atol=1e-5 * float(g_exact.abs().max()))
