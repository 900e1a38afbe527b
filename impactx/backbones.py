"""Backbone registry. A backbone is M: image → K class scores, in three parts:

    stem   image → mid-level feature map (stride 2–4); where ABN's attention and WAE's encoding act
    trunk  feature map → feature vector
    head   the last fully connected layer, feature vector → K scores

The LEP is the same backbone with `head` replaced. LeNet-5 and cnn3 (a small VGG-style CNN) are defined
here. MobileNetV2 and EfficientNet-B2 are torchvision's models, cut at stride 4 (8×8 maps for 32×32
inputs, as ABN's CIFAR networks), with ImageNet weights by torchvision name, from a local state_dict
file, or none (`model.pretrained: false`). tf_efficientnet_b2 is timm's port of the TensorFlow
EfficientNet-B2, the one with the noisy-student weights the paper used (`pip install -e ".[timm]"`), cut the
same way.

Add a backbone with @register("name"); its builder takes (in_channels, num_classes, image_size, ModelParams)."""

from __future__ import annotations

import copy
import urllib.error
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from impactx import ImpactXError
from impactx.config import ModelParams

BACKBONES: dict[str, Callable[..., Backbone]] = {}


def register(name: str):
    def deco(fn):
        BACKBONES[name] = fn
        return fn

    return deco


class Backbone(nn.Module):
    def __init__(self, stem: nn.Module, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.stem, self.trunk, self.head = stem, trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(self.stem(x)))


def build_backbone(
    name: str, in_channels: int, num_classes: int, image_size: int, params: ModelParams | None = None
) -> Backbone:
    if name not in BACKBONES:
        raise ImpactXError(f"unknown backbone '{name}': model.backbone must be one of {sorted(BACKBONES)}")
    return BACKBONES[name](in_channels, num_classes, image_size, params or ModelParams(backbone=name))


def with_new_head(backbone: Backbone, head: nn.Module) -> Backbone:
    """A fresh copy of `backbone` with its last FC replaced by `head` (how the LEP is made)."""
    twin = copy.deepcopy(backbone)
    twin.head = head
    return twin


def feature_shape(backbone: Backbone, in_channels: int, image_size: int) -> tuple[int, int, int]:
    """C×H×W of the stem's feature map for one input size (a dry run, so no table of numbers to keep)."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        shape = backbone.stem(torch.zeros(1, in_channels, image_size, image_size)).shape[1:]
    backbone.train(was_training)
    return tuple(shape)


@register("lenet5")
def lenet5(in_channels: int, num_classes: int, image_size: int, params: ModelParams) -> Backbone:
    """LeNet-5: conv(6,5×5)-pool | conv(16,5×5)-pool-FC120-FC84 | FC(K), for C channels at any size ≥ 16."""
    if params.pretrained:
        raise ImpactXError("lenet5 has no pretrained weights: set model.pretrained: false")
    if image_size < 16:
        raise ImpactXError(f"lenet5 needs images of at least 16×16, got {image_size}: set data.image_size")
    side = ((image_size - 4) // 2 - 4) // 2
    stem = nn.Sequential(nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2))
    trunk = nn.Sequential(
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
    )
    return Backbone(stem, trunk, nn.Linear(84, num_classes))


def _conv_block(i: int, o: int) -> list[nn.Module]:
    """3×3 conv (same size), batch norm, ReLU, 2×2 max pool: C_i×S×S → C_o×S/2×S/2."""
    return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]


@register("cnn3")
def cnn3(in_channels: int, num_classes: int, image_size: int, params: ModelParams) -> Backbone:
    """A small VGG-style CNN: block(16) | block(32)-block(64)-flatten | FC(K), each block a 3×3 conv, batch
    norm, ReLU and 2×2 max pool. Half LeNet-5's weights, 4–5× its forward cost; on CIFAR-10 it beats it
    (docs/guide/attribution.md, "Teacher models"), so it is a cheap teacher for a LeNet-5 student on CPU."""
    if params.pretrained:
        raise ImpactXError("cnn3 has no pretrained weights: set model.pretrained: false")
    if image_size < 8:
        raise ImpactXError(f"cnn3 needs images of at least 8×8, got {image_size}: set data.image_size")
    side = image_size // 8  # three 2×2 pools
    stem = nn.Sequential(*_conv_block(in_channels, 16))  # C×S×S → 16×S/2×S/2
    trunk = nn.Sequential(*_conv_block(16, 32), *_conv_block(32, 64), nn.Flatten())  # → 64·(S/8)²
    return Backbone(stem, trunk, nn.Linear(64 * side * side, num_classes))


# ---------------------------------------------------------------- torchvision backbones


def imagenet_state_dict(arch: str, params: ModelParams) -> dict:
    """ImageNet weights for torchvision model `arch`: from model.weights_path, else downloaded by name
    (torchvision's cache first, so a file placed there works offline)."""
    from torchvision.models import get_model_weights

    if params.weights_path:
        path = Path(params.weights_path)
        if not path.is_file():
            raise ImpactXError(f"model.weights_path {path} not found: point it at a {arch} state_dict file")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ImpactXError(
                f"model.weights_path {path} is not a torch state_dict ({e}): save one with torch.save(model.state_dict())"
            ) from None
    enum = get_model_weights(arch)
    try:
        weights = enum[params.weights]
    except KeyError:
        names = [w.name for w in enum] + ["DEFAULT"]
        raise ImpactXError(
            f"model.weights '{params.weights}' is not a {enum.__name__} name: use one of {names}"
        ) from None
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        raise ImpactXError(
            f"cannot download {enum.__name__}.{weights.name} from {weights.url} ({getattr(e, 'reason', e)}): "
            f"put that file at {cached}, or set model.weights_path to a local copy, or set model.pretrained: false"
        ) from None


def _with_inputs(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The same convolution (its class too: timm's 'same'-padding one stays one) with `in_channels` inputs
    (grey images); pretrained filters are averaged over RGB."""
    if conv.in_channels == in_channels:
        return conv
    shape: dict = {"kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding}
    new = type(conv)(in_channels, conv.out_channels, **shape, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.mean(1, keepdim=True).expand_as(new.weight))
    return new


def _load_error(e: RuntimeError) -> str:
    """load_state_dict's complaint in one short line (a wrong file misses hundreds of keys)."""
    lines = str(e).splitlines()
    first = (lines[1] if len(lines) > 1 else lines[0]).strip()
    return first if len(first) <= 120 else first[:120] + "…"


def _torchvision_backbone(arch: str, split: int, in_channels, num_classes, image_size, params: ModelParams) -> Backbone:
    import torchvision.models

    if image_size < 32:
        raise ImpactXError(f"{arch} needs images of at least 32×32, got {image_size}: set data.image_size: 32")
    net = torchvision.models.get_model(arch, weights=None)
    if params.pretrained:
        try:
            net.load_state_dict(imagenet_state_dict(arch, params))
        except RuntimeError as e:
            raise ImpactXError(
                f"the weights do not fit torchvision's {arch} ({_load_error(e)}): use a state_dict with its keys"
            ) from None
    first = net.features[0]
    assert isinstance(first, nn.Sequential) and isinstance(first[0], nn.Conv2d)
    first[0] = _with_inputs(first[0], in_channels)
    dropout, fc = net.classifier[0], net.classifier[-1]
    stem = net.features[:split]
    trunk = nn.Sequential(net.features[split:], nn.AdaptiveAvgPool2d(1), nn.Flatten(), dropout)
    return Backbone(stem, trunk, nn.Linear(fc.in_features, num_classes))


@register("mobilenet_v2")
def mobilenet_v2(in_channels: int, num_classes: int, image_size: int, params: ModelParams) -> Backbone:
    """torchvision MobileNetV2; stem = features[:4] (stride 4, 24 channels)."""
    return _torchvision_backbone("mobilenet_v2", 4, in_channels, num_classes, image_size, params)


@register("efficientnet_b2")
def efficientnet_b2(in_channels: int, num_classes: int, image_size: int, params: ModelParams) -> Backbone:
    """torchvision EfficientNet-B2; stem = features[:3] (stride 4, 24 channels)."""
    return _torchvision_backbone("efficientnet_b2", 3, in_channels, num_classes, image_size, params)


# ---------------------------------------------------------------- timm backbones (optional: the [timm] extra)

TIMM_DEFAULT_TAG = {"tf_efficientnet_b2": "ns_jft_in1k"}  # model.weights DEFAULT: the paper's noisy-student weights


def _timm_model(arch: str, params: ModelParams):
    """timm's `arch`, with its pretrained weights from model.weights_path (the file timm's hub page holds:
    model.safetensors or pytorch_model.bin), else downloaded from the Hugging Face hub; no weights when
    model.pretrained is false."""
    try:
        import timm
    except ImportError:
        raise ImpactXError(f'backbone {arch} needs timm: pip install -e ".[timm]"') from None
    if not params.pretrained:
        return timm.create_model(arch, pretrained=False)
    tag = TIMM_DEFAULT_TAG.get(arch, "") if params.weights == "DEFAULT" else params.weights
    name = f"{arch}.{tag}" if tag else arch
    if params.weights_path:
        path = Path(params.weights_path)
        if not path.is_file():
            raise ImpactXError(f"model.weights_path {path} not found: point it at {name}'s model.safetensors")
        overlay = {"file": str(path)}
    else:
        overlay = _hub_file(name)
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except RuntimeError as e:  # a file that is not this architecture's weights
        raise ImpactXError(
            f"model.weights_path does not fit timm's {arch} ({_load_error(e)}): use {name}'s file"
        ) from None
    except Exception as e:  # no network: huggingface_hub and requests raise their own types
        if params.weights_path:
            raise ImpactXError(
                f"cannot read {params.weights_path} as {name} weights ({type(e).__name__}: {e})"
            ) from None
        raise ImpactXError(_no_hub(name, type(e).__name__)) from None


def _no_hub(name: str, why: str) -> str:
    return (
        f"cannot download {name} from the Hugging Face hub ({why}): put model.safetensors (or pytorch_model.bin) "
        f"from https://huggingface.co/timm/{name} on this machine and set model.weights_path to it, or set "
        "model.pretrained: false"
    )


def _hub_file(name: str) -> dict:
    """{} when the hub answers (timm downloads, or reads its cache); else the cached weights file, or one
    line at once instead of huggingface_hub's minute of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return {}
    except OSError:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(f"timm/{name}", filename)
            if isinstance(cached, str):
                return {"file": cached}
        raise ImpactXError(_no_hub(name, f"{host} unreachable")) from None


@register("tf_efficientnet_b2")
def tf_efficientnet_b2(in_channels: int, num_classes: int, image_size: int, params: ModelParams) -> Backbone:
    """timm's tf_efficientnet_b2 (TensorFlow 'same' padding), weights `ns_jft_in1k` (noisy student, 260×260
    inputs: set data.image_size: 260 to match them); stem = conv_stem, bn1 and blocks[:2] (stride 4, 24 channels)."""
    if image_size < 32:
        raise ImpactXError(f"tf_efficientnet_b2 needs images of at least 32×32, got {image_size}: set data.image_size")
    net = _timm_model("tf_efficientnet_b2", params)
    net.conv_stem = _with_inputs(net.conv_stem, in_channels)
    stem = nn.Sequential(net.conv_stem, net.bn1, net.blocks[:2])
    trunk = nn.Sequential(net.blocks[2:], net.conv_head, net.bn2, net.global_pool, nn.Dropout(0.3))
    return Backbone(stem, trunk, nn.Linear(net.num_features, num_classes))
