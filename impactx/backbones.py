"""Backbone registry. A backbone is M: image → K class scores, built as `body` (image → feature vector)
followed by `head` (the last fully connected layer). The LEP is the same backbone with `head` replaced.

Add a backbone with @register("name"); its builder takes (in_channels, num_classes, image_size)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from impactx import ImpactXError

BACKBONES: dict[str, Callable[..., Backbone]] = {}


def register(name: str):
    def deco(fn):
        BACKBONES[name] = fn
        return fn

    return deco


class Backbone(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_backbone(name: str, in_channels: int, num_classes: int, image_size: int) -> Backbone:
    if name not in BACKBONES:
        raise ImpactXError(f"unknown backbone '{name}': model.backbone must be one of {sorted(BACKBONES)}")
    return BACKBONES[name](in_channels, num_classes, image_size)


def with_new_head(backbone: Backbone, head: nn.Module) -> Backbone:
    """A fresh copy of `backbone` with its last FC replaced by `head` (how the LEP is made)."""
    twin = copy.deepcopy(backbone)
    twin.head = head
    return twin


@register("lenet5")
def lenet5(in_channels: int, num_classes: int, image_size: int) -> Backbone:
    """LeNet-5: conv(6,5×5)-pool-conv(16,5×5)-pool-FC120-FC84-FC(K), for C channels at any size ≥ 16."""
    if image_size < 16:
        raise ImpactXError(f"lenet5 needs images of at least 16×16, got {image_size}: set data.image_size")
    side = ((image_size - 4) // 2 - 4) // 2
    body = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
    )
    return Backbone(body, nn.Linear(84, num_classes))
