"""The baseline A = Q(M(x)), which every method is built on or from (IMPACTX itself is in impactx.methods.impactx).

Every model takes float images in [0, 1] and normalises them itself, so SHAP, MoRF noise and MLflow's
pyfunc all work in the same plain pixel space."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from impactx.backbones import Backbone, build_backbone
from impactx.config import ModelParams
from impactx.data import DatasetInfo
from impactx.io import load_checkpoint, read


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).clamp_min(1e-6))

    def forward(self, x):
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Baseline A: logits = M(normalise(x)); the prediction is their argmax."""

    def __init__(self, backbone: Backbone, mean, std):
        super().__init__()
        self.normalize, self.backbone = Normalize(mean, std), backbone

    def forward(self, x):
        return self.backbone(self.normalize(x))

    def loss(self, x, y, r=None) -> dict:
        return {"loss": F.cross_entropy(self(x), y)}


def build_baseline(model: ModelParams, info: DatasetInfo, checkpoint: str | Path | None = None) -> Classifier:
    """A from the prepared dataset's description (channels, size, classes, train mean/std). With a
    checkpoint (impactx.methods.save's format) its weights are loaded from there, and no pretrained
    weights are fetched first."""
    c, h, _ = info.image_shape
    if checkpoint is not None:
        model = model.model_copy(update={"pretrained": False})
    net = Classifier(build_backbone(model.backbone, c, info.num_classes, h, model), info.mean, info.std)
    if checkpoint is not None:
        net.load_state_dict(read(checkpoint, load_checkpoint)["state_dict"])
    return net
