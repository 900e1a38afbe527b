"""GradientSHAP (captum): `samples` random points between the image and seeded uniform-noise baselines."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from impactx.attribution import register
from impactx.attribution._gradients import gradient_maps
from impactx.config import Section

NOISE_BASELINES = 8  # uniform-noise images drawn per image, seeded by (seed, index)


class GradientShapSettings(Section):
    samples: int = Field(16, gt=0)  # random points between the image and its noise baselines


@register("gradient_shap", label="GradientSHAP", settings=GradientShapSettings, cost="samples",
          explainer=f"captum.attr.GradientShap, {NOISE_BASELINES} seeded uniform-noise baselines per image")  # fmt: skip
def gradient_shap(model, images, targets, options: GradientShapSettings, run):
    from captum.attr import GradientShap  # imported when used: the registry loads every R

    def one_batch(net, x, y, first):  # captum draws with np.random: each image gets its own seeded draws
        rows, state = [], np.random.get_state()
        try:
            for i in range(len(x)):
                np.random.seed([run.seed, first + i])
                base = torch.from_numpy(np.random.random_sample((NOISE_BASELINES, *x.shape[1:])).astype(np.float32))
                rows.append(GradientShap(net).attribute(x[i : i + 1], baselines=base.to(x.device), target=y[i : i + 1],
                                                        n_samples=options.samples, stdevs=0.0))  # fmt: skip
        finally:
            np.random.set_state(state)
        return torch.cat(rows)

    return gradient_maps(model, images, targets, run, options.samples, one_batch)
