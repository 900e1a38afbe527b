"""Integrated Gradients (captum) from a black image, `steps` Gauss-Legendre points on the path."""

from __future__ import annotations

import torch
from pydantic import Field

from impactx.attribution import register
from impactx.attribution._gradients import gradient_maps
from impactx.config import Section


class IntegratedGradientsSettings(Section):
    steps: int = Field(32, gt=0)  # points on the path from a black image (forward + backward passes per image)


@register("integrated_gradients", label="Integrated Gradients", settings=IntegratedGradientsSettings, cost="steps",
          explainer="captum.attr.IntegratedGradients from a black image (Gauss-Legendre points)")  # fmt: skip
def integrated_gradients(model, images, targets, options: IntegratedGradientsSettings, run):
    from captum.attr import IntegratedGradients  # imported when used: the registry loads every R

    def one_batch(net, x, y, first):
        return IntegratedGradients(net).attribute(x, baselines=torch.zeros_like(x), target=y, n_steps=options.steps,
                                                  method="gausslegendre")  # fmt: skip

    return gradient_maps(model, images, targets, run, options.steps, one_batch)
