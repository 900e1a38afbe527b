"""DeepLIFT (captum) against a black image: for models built of nn.Module layers only."""

from __future__ import annotations

import torch

from impactx.attribution import register
from impactx.attribution._gradients import gradient_maps


@register("deeplift", label="DeepLIFT", explainer="captum.attr.DeepLift against a black image")
def deeplift(model, images, targets, options, run):
    from captum.attr import DeepLift  # imported when used: the registry loads every R

    def one_batch(net, x, y, first):
        return DeepLift(net).attribute(x, baselines=torch.zeros_like(x), target=y)

    return gradient_maps(model, images, targets, run, 1, one_batch)
