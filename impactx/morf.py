"""MoRF (most relevant first) curves and AOPC.

The image is cut into patch_size×patch_size patches ranked by the map's relevance (sum over the patch and
channels). At step k of `steps`, the top round(k·P/steps) patches are replaced by uniform noise in [0, 1]
and the model's probability of the class it predicted on the clean image is recorded. A faithful map
makes the curve fall fast. AOPC = mean over images and steps 0..steps of p(x) − p(x_k): higher is better.
The noise is drawn once per image from `seed`, so every map is judged against the same noise."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from impactx import ImpactXError


def patch_relevance(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """N×C×H×W maps → N×P patch scores (P = (H/ps)·(W/ps), row-major)."""
    _, _, h, w = maps.shape
    if h % patch_size or w % patch_size:
        raise ImpactXError(f"evaluate.patch_size {patch_size} does not divide the image size {h}×{w}: pick a divisor")
    pooled = F.avg_pool2d(maps.float().sum(1, keepdim=True), patch_size) * patch_size**2
    return pooled.flatten(1)


@torch.no_grad()
def morf_curves(
    model,
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    patch_size: int,
    steps: int,
    device: torch.device,
    seed: int = 0,
    chunk: int = 32,
) -> np.ndarray:
    """Returns an N×(steps+1) array of the predicted class's probability along the MoRF path."""
    model = model.to(device).eval()
    n, c, h, w = images.shape
    rel = patch_relevance(maps, patch_size)
    n_patches = rel.shape[1]
    rank = torch.empty_like(rel, dtype=torch.long)
    order = torch.argsort(rel, dim=1, descending=True, stable=True)
    rank.scatter_(1, order, torch.arange(n_patches).expand(n, -1).contiguous())  # rank of each patch
    removed = torch.tensor([round(k * n_patches / steps) for k in range(steps + 1)])  # patches gone at step k
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(images.shape, generator=gen)
    curves = []
    for lo in range(0, n, chunk):
        x, nz, r = images[lo : lo + chunk], noise[lo : lo + chunk], rank[lo : lo + chunk]
        b = len(x)
        patch_mask = (r[:, None, :] < removed[None, :, None]).float()  # b×(steps+1)×P
        pix = patch_mask.view(b * (steps + 1), 1, h // patch_size, w // patch_size)
        pix = F.interpolate(pix, scale_factor=patch_size, mode="nearest").view(b, steps + 1, 1, h, w)
        xk = torch.where(pix.bool(), nz[:, None], x[:, None]).view(b * (steps + 1), c, h, w)
        probs = torch.softmax(model(xk.to(device)).float(), 1).cpu().view(b, steps + 1, -1)
        pred = probs[:, 0].argmax(1)
        curves.append(probs.gather(2, pred.view(b, 1, 1).expand(b, steps + 1, 1)).squeeze(2))
    return torch.cat(curves).numpy()


def aopc(curves: np.ndarray) -> float:
    return float((curves[:, :1] - curves).mean())
