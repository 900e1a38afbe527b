"""Backbones: torchvision models split into stem/trunk/head, and their weights by name, from a file, or
none, with a one-line error when a download is impossible."""

import urllib.error

import pytest
import torch
import torchvision

from impactx import ImpactXError
from impactx.backbones import build_backbone, feature_shape
from impactx.config import ModelParams


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    def fail(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fail)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.mark.parametrize(
    "name,channels",
    [("lenet5", 6), ("cnn3", 16), ("mobilenet_v2", 24), ("efficientnet_b2", 24), ("tf_efficientnet_b2", 24)],
)
@pytest.mark.parametrize("size", [32, 96])
def test_backbone_parts_and_shapes(name, channels, size):
    net = build_backbone(name, 3, 7, size).eval()
    x = torch.rand(2, 3, size, size)
    assert net(x).shape == (2, 7)
    c, h, w = feature_shape(net, 3, size)
    assert c == channels and h == w and h in (size // 2 - 2, size // 2, size // 4)  # stride 2 (LeNet, cnn3) or 4
    assert isinstance(net.head, torch.nn.Linear) and net.head.out_features == 7


def test_grey_images_get_a_one_channel_first_conv():
    net = build_backbone("mobilenet_v2", 1, 10, 32)
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 10)


def test_weights_from_a_local_state_dict_file(tmp_path, no_network):
    reference = torchvision.models.mobilenet_v2()  # torchvision's keys, ImageNet's 1000-class head
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    net = build_backbone(
        "mobilenet_v2", 3, 10, 32, ModelParams(backbone="mobilenet_v2", pretrained=True, weights_path=str(path))
    )
    assert torch.equal(net.stem[0][0].weight, reference.features[0][0].weight)
    assert torch.equal(net.trunk[0][-1][0].weight, reference.features[-1][0].weight)
    assert net.head.out_features == 10


def test_offline_without_weights_is_one_line_naming_the_file(no_network):
    with pytest.raises(ImpactXError) as e:
        build_backbone("efficientnet_b2", 3, 10, 32, ModelParams(backbone="efficientnet_b2", pretrained=True))
    msg = str(e.value)
    assert "\n" not in msg and "efficientnet_b2_rwightman-c35c1473.pth" in msg
    assert "model.weights_path" in msg and "model.pretrained: false" in msg


@pytest.mark.parametrize(
    "params,expected",
    [
        (ModelParams(backbone="lenet5", pretrained=True), "lenet5 has no pretrained weights"),
        (ModelParams(backbone="cnn3", pretrained=True), "cnn3 has no pretrained weights"),
        (
            ModelParams(backbone="mobilenet_v2", pretrained=True, weights="IMAGENET9K"),
            "not a MobileNet_V2_Weights name",
        ),
        (
            ModelParams(backbone="mobilenet_v2", pretrained=True, weights_path="nope.pth"),
            "model.weights_path nope.pth not found",
        ),
        (ModelParams(backbone="resnet"), "unknown backbone 'resnet'"),
    ],
)
def test_bad_model_params_are_one_line(params, expected, no_network):
    with pytest.raises(ImpactXError, match=expected):
        build_backbone(params.backbone, 3, 10, 32, params)


def test_weights_that_do_not_fit_are_one_line(tmp_path, no_network):
    path = tmp_path / "wrong.pth"
    torch.save({"features.0.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ImpactXError, match="do not fit torchvision's mobilenet_v2"):
        build_backbone(
            "mobilenet_v2", 3, 10, 32, ModelParams(backbone="mobilenet_v2", pretrained=True, weights_path=str(path))
        )


TIMM = ModelParams(backbone="tf_efficientnet_b2", pretrained=True)


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """No route to the Hugging Face hub and an empty hub cache."""
    import socket

    import huggingface_hub

    def fail(*a, **k):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(socket, "create_connection", fail)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_timm_weights_from_a_local_file_and_grey_images(tmp_path, no_hub):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    reference = timm.create_model("tf_efficientnet_b2", pretrained=False)  # timm's keys, ImageNet's head
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), path)
    params = TIMM.model_copy(update={"weights_path": str(path)})
    net = build_backbone("tf_efficientnet_b2", 3, 10, 32, params)
    assert torch.equal(net.stem[0].weight, reference.conv_stem.weight)
    assert torch.equal(net.trunk[1].weight, reference.conv_head.weight)
    grey = build_backbone("tf_efficientnet_b2", 1, 10, 32, params)  # the stem conv averaged over RGB
    assert torch.allclose(grey.stem[0].weight[:, 0], reference.conv_stem.weight.mean(1))
    assert grey(torch.rand(2, 1, 32, 32)).shape == (2, 10)


def test_timm_offline_is_one_line_at_once_naming_the_file(no_hub):
    pytest.importorskip("timm")
    with pytest.raises(ImpactXError) as e:
        build_backbone("tf_efficientnet_b2", 3, 10, 32, TIMM)
    msg = str(e.value)
    assert "\n" not in msg and "https://huggingface.co/timm/tf_efficientnet_b2.ns_jft_in1k" in msg
    assert "model.weights_path" in msg and "model.pretrained: false" in msg


def test_timm_weights_that_do_not_fit_are_one_line(tmp_path, no_hub):
    pytest.importorskip("timm")
    path = tmp_path / "wrong.pth"
    torch.save({"conv_stem.weight": torch.zeros(1)}, path)
    with pytest.raises(ImpactXError, match="does not fit timm's tf_efficientnet_b2") as e:
        build_backbone("tf_efficientnet_b2", 3, 10, 32, TIMM.model_copy(update={"weights_path": str(path)}))
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
