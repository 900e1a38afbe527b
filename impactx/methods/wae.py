"""WAE, this project's reading of the comparator the IMPACTX paper cites as [7] (its publication could
not be found): an attention branch that is an explanation encoder.

    e(x) = Σ_k p_k(x) · S_k     S_k: mean scaled training SHAP map of class k (K×C×H×W, a buffer)
                                p(x): class probabilities of the stage-1 classifier A (frozen)
    g(x) = stem(x)              mid-level features of a trainable copy of A's backbone
    ŷ    = head(trunk(g(x) · (1 + E(e(x)))))    E: conv encoder to g's shape, sigmoid output

The true class is never an input: training and inference both use the probability-weighted average,
so the network meets at test time exactly what it was trained on. e(x) is WAE's explanation for MoRF."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from impactx.backbones import feature_shape
from impactx.config import TrainParams
from impactx.maps import class_mean_maps
from impactx.methods import Stage1, register
from impactx.model import Classifier


class ExplanationEncoder(nn.Module):
    """E: an explanation map (C×H×W) → a gate of the stem's feature shape, in (0, 1)."""

    def __init__(self, in_channels: int, feature_shape: tuple[int, int, int], width: int = 16):
        super().__init__()
        ch, h, w = feature_shape
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((h, w)),
            nn.Conv2d(width, ch, 1),
            nn.Sigmoid(),
        )

    def forward(self, e):
        return self.net(e)


class WAE(nn.Module):
    """forward() returns logits; explain() returns (logits, e(x))."""

    def __init__(self, baseline: Classifier, class_maps: torch.Tensor):
        super().__init__()
        c, h = class_maps.shape[1], class_maps.shape[2]
        self.normalize = baseline.normalize
        self.a = baseline.backbone  # frozen A: gives the class probabilities that weight the maps
        for p in self.a.parameters():
            p.requires_grad_(False)
        self.backbone = copy.deepcopy(baseline.backbone)  # trainable, starts from A
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        self.encoder = ExplanationEncoder(c, feature_shape(self.backbone, c, h))
        self.register_buffer("class_maps", class_maps.float())

    def train(self, mode: bool = True):
        super().train(mode)
        self.a.eval()
        return self

    def explanation(self, xn):
        with torch.no_grad():
            p = torch.softmax(self.a(xn), 1)
        return torch.einsum("nk,kchw->nchw", p, self.class_maps)

    def explain(self, x):
        xn = self.normalize(x)
        e = self.explanation(xn)
        g = self.backbone.stem(xn)
        return self.backbone.head(self.backbone.trunk(g * (1 + self.encoder(e)))), e

    def forward(self, x):
        return self.explain(x)[0]

    def loss(self, x, y, r=None) -> dict:
        return {"loss": F.cross_entropy(self(x), y)}


@register("wae", label="WAE", map_kind="weighted average explanation e(x)")
def wae(stage1: Stage1, settings: TrainParams) -> WAE:
    """On top of the trained A; S_k from the training maps (zeros when loading: the buffer is restored)."""
    k, shape = stage1.info.num_classes, stage1.info.image_shape
    if stage1.maps is None or stage1.labels is None:
        class_maps = torch.zeros(k, *shape)
    else:
        class_maps = class_mean_maps(stage1.maps, stage1.labels, k)
    return WAE(stage1.baseline(), class_maps)
