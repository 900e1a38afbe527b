"""ABN, the Attention Branch Network (Fukui et al., CVPR 2019), on any registered backbone.

The backbone's stem gives mid-level features g(x). The attention branch turns g(x) into K class maps:
their global average is a second set of class scores (trained with L_att), and a 1×1 conv + sigmoid
over them gives one attention map A(x). The perception branch (trunk and head) classifies
g(x)·(1 + A(x)), trained with L_per. A(x), upsampled to the input, is ABN's explanation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from impactx.backbones import feature_shape
from impactx.config import TrainParams
from impactx.methods import Stage1, register
from impactx.model import Classifier


class AttentionBranch(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, num_classes, 1, bias=False),
            nn.BatchNorm2d(num_classes),
            nn.ReLU(),
        )
        self.scores = nn.Conv2d(num_classes, num_classes, 1)
        self.attention = nn.Sequential(nn.Conv2d(num_classes, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g):
        h = self.body(g)
        return self.scores(h).mean((2, 3)), self.attention(h)


class ABN(nn.Module):
    """forward() returns the perception branch's logits; explain() returns (logits, A(x) at input size)."""

    def __init__(self, baseline: Classifier, num_classes: int, image_shape):
        super().__init__()
        c, h, _ = image_shape
        self.normalize, self.backbone = baseline.normalize, baseline.backbone
        self.branch = AttentionBranch(feature_shape(self.backbone, c, h)[0], num_classes)
        self.image_shape = tuple(image_shape)

    def branches(self, x):
        """(perception logits, attention-branch logits, attention map at feature size)."""
        g = self.backbone.stem(self.normalize(x))
        att_logits, att = self.branch(g)
        return self.backbone.head(self.backbone.trunk(g * (1 + att))), att_logits, att

    def explain(self, x):
        logits, _, att = self.branches(x)
        c, h, w = self.image_shape
        return logits, F.interpolate(att, size=(h, w), mode="bilinear", align_corners=False).expand(-1, c, -1, -1)

    def forward(self, x):
        return self.branches(x)[0]

    def loss(self, x, y, r=None) -> dict:
        """L = L_per + L_att, both cross-entropy."""
        logits, att_logits, _ = self.branches(x)
        per, att = F.cross_entropy(logits, y), F.cross_entropy(att_logits, y)
        return {"loss": per + att, "per": per, "att": att}


@register("abn", label="ABN", map_kind="attention map A(x)")
def abn(stage1: Stage1, settings: TrainParams) -> ABN:
    """ABN around a freshly built baseline: the same seeded initial weights as stage 1, not the trained A."""
    return ABN(stage1.baseline(trained=False), stage1.info.num_classes, stage1.info.image_shape)
