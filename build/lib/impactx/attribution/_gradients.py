"""What the captum methods share: batches of whole images within the rows budget, captum's notes hushed."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from impactx.attribution import Probability, Run


def gradient_maps(
    model, images: torch.Tensor, targets: np.ndarray, run: Run, rows_per_image: int, one_batch
) -> np.ndarray:
    """one_batch(net, x, y, first) → attributions of images x (first: the index of x[0] in the run), for
    chunks of images that spend at most run.batch_size rows (rows_per_image each) per pass."""
    net = Probability(model).eval()
    y_all = torch.as_tensor(targets, dtype=torch.long)
    chunk = max(1, run.batch_size // rows_per_image)
    out = np.empty(tuple(images.shape), np.float32)
    for lo in range(0, len(images), chunk):
        x = images[lo : lo + chunk].to(run.device).clone().requires_grad_(True)
        y = y_all[lo : lo + chunk].to(run.device)
        with warnings.catch_warnings():  # captum's notes about the hooks it sets on activations
            warnings.filterwarnings("ignore", category=UserWarning, module="captum")
            a = one_batch(net, x, y, run.first_index + lo)
        out[lo : lo + len(x)] = a.detach().float().cpu().numpy()
        if run.progress is not None:
            run.progress.update(len(x))
    return out
