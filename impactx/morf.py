"""Removal curves: MoRF (most relevant first) and LeRF (least relevant first), AOPC and the symmetric
relevance gain.

The image is cut into patch_size×patch_size patches ranked by the map's relevance (sum over the patch and
channels). At step k of `steps`, round(k·P/steps) patches are removed, the most relevant first (MoRF) or
the least relevant first (LeRF), and the model's probability of the class it predicted on the clean image
is recorded. Two ways to remove a patch (`removal`):

    uniform        its pixels become uniform noise in [0, 1], drawn once per image from `seed`
    noisy_linear   ROAD's noisy linear imputation (Rong et al., ICML 2022): each removed pixel is the
                   weighted mean of its 8 neighbours (1/6 for the 4 direct ones, 1/12 diagonally), solved
                   for all removed pixels at once, plus Gaussian noise (std 0.01). It stays close to the
                   data, so a blurry map is not rewarded for putting noise patches into the image, and the
                   removed patches' shapes leak less. With every patch removed the image is grey (0.5).

A faithful map makes the MoRF curve fall fast and the LeRF curve stay high. AOPC = mean over images and
steps 0..steps of p(x) − p(x_k) on the MoRF path: higher is better. The symmetric relevance gain (SRG,
Blücher et al., 2024) = area under LeRF − area under MoRF (areas: the mean over the steps), which is
AOPC(MoRF) − AOPC(LeRF): 0 for a random map in expectation, higher is better."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from impactx import ImpactXError

Order = Literal["morf", "lerf"]
Removal = Literal["uniform", "noisy_linear"]
NOISE_STD = 0.01  # ROAD's noise on imputed pixels
_NEIGHBOURS = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def patch_relevance(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """N×C×H×W maps → N×P patch scores (P = (H/ps)·(W/ps), row-major)."""
    _, _, h, w = maps.shape
    if h % patch_size or w % patch_size:
        raise ImpactXError(f"evaluate.patch_size {patch_size} does not divide the image size {h}×{w}: pick a divisor")
    pooled = F.avg_pool2d(maps.float().sum(1, keepdim=True), patch_size) * patch_size**2
    return pooled.flatten(1)


def noisy_linear_impute(x: torch.Tensor, removed: torch.Tensor, gen: torch.Generator, tol: float = 1e-5):
    """x: B×C×H×W; removed: B×1×H×W bool. Each removed pixel becomes the weighted mean of its neighbours
    (the linear system of all removed pixels of an image, solved by conjugate gradients, batched), plus
    N(0, NOISE_STD²) noise; known pixels are kept. Images with no known pixel become grey 0.5 + noise."""
    b, c, h, w = x.shape
    kernel = _NEIGHBOURS.to(x)[None, None].expand(c, 1, 3, 3)
    spread = lambda t: F.conv2d(t, kernel, padding=1, groups=c)  # noqa: E731  Σ_j w_ij t_j per pixel
    rem = removed.to(x.dtype).expand(b, c, h, w)
    known = 1.0 - rem
    degree = spread(torch.ones_like(x))  # Σ_j w_ij over the neighbours inside the image

    def system(u):  # (D − W) u on the removed pixels, u zero elsewhere: symmetric, positive definite
        return rem * (degree * u - spread(u))

    rhs = rem * spread(x * known)  # what the known neighbours contribute
    u, res = torch.zeros_like(x), rhs.clone()
    p, rr = res.clone(), (res * res).sum((1, 2, 3), keepdim=True)
    stop = tol**2 * rr.clamp_min(1e-30)
    for _ in range(4 * h * w):  # CG converges in far fewer steps; this bounds a pathological case
        if bool((rr <= stop).all()):
            break
        ap = system(p)
        alpha = rr / (p * ap).sum((1, 2, 3), keepdim=True).clamp_min(1e-30)
        u, res = u + alpha * p, res - alpha * ap
        rr_new = (res * res).sum((1, 2, 3), keepdim=True)
        p, rr = res + (rr_new / rr.clamp_min(1e-30)) * p, rr_new
    none_known = known.flatten(1).sum(1) == 0
    u[none_known] = 0.5
    noise = torch.randn(x.shape, generator=gen).to(x) * NOISE_STD
    return torch.where(rem.bool(), (u + noise).clamp(0, 1), x)


CHUNK = 32  # images per forward pass of removal_curves: CHUNK × (steps + 1) rows


def rows_per_pass(steps: int) -> int:
    """Model rows of one removal_curves forward pass: the batch an inference.prepare'd model is compiled for."""
    return CHUNK * (steps + 1)


@torch.no_grad()
def removal_curves(
    model,
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    patch_size: int,
    steps: int,
    device: torch.device,
    seed: int = 0,
    order: Order = "morf",
    removal: Removal = "uniform",
    chunk: int = CHUNK,
) -> np.ndarray:
    """An N×(steps+1) array of the predicted class's probability along the MoRF or LeRF path."""
    if order not in ("morf", "lerf"):
        raise ImpactXError(f"unknown removal order '{order}': use morf or lerf")
    if removal not in ("uniform", "noisy_linear"):
        raise ImpactXError(f"evaluate.removal '{removal}' is unknown: use uniform or noisy_linear")
    model = model.to(device).eval()
    n, c, h, w = images.shape
    rel = patch_relevance(maps, patch_size)
    n_patches = rel.shape[1]
    rank = torch.empty_like(rel, dtype=torch.long)
    ranked = torch.argsort(rel, dim=1, descending=order == "morf", stable=True)
    rank.scatter_(1, ranked, torch.arange(n_patches).expand(n, -1).contiguous())  # removal rank of each patch
    removed = torch.tensor([round(k * n_patches / steps) for k in range(steps + 1)])  # patches gone at step k
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(images.shape, generator=gen) if removal == "uniform" else None
    curves = []
    for lo in range(0, n, chunk):
        x, r = images[lo : lo + chunk], rank[lo : lo + chunk]
        b = len(x)
        patch_mask = (r[:, None, :] < removed[None, :, None]).float()  # b×(steps+1)×P
        pix = patch_mask.view(b * (steps + 1), 1, h // patch_size, w // patch_size)
        pix = F.interpolate(pix, scale_factor=patch_size, mode="nearest").bool()  # b(steps+1)×1×H×W
        xs = x[:, None].expand(b, steps + 1, c, h, w).reshape(b * (steps + 1), c, h, w)
        if noise is None:
            xk = noisy_linear_impute(xs, pix, gen)
        else:
            nz = noise[lo : lo + chunk, None].expand(b, steps + 1, c, h, w).reshape(xs.shape)
            xk = torch.where(pix, nz, xs)
        probs = torch.softmax(model(xk.to(device)).float(), 1).cpu().view(b, steps + 1, -1)
        pred = probs[:, 0].argmax(1)
        curves.append(probs.gather(2, pred.view(b, 1, 1).expand(b, steps + 1, 1)).squeeze(2))
    return torch.cat(curves).numpy()


def morf_curves(model, images, maps, **kw) -> np.ndarray:
    """The MoRF path (removal_curves with order="morf")."""
    return removal_curves(model, images, maps, order="morf", **kw)


def aopc(curves: np.ndarray) -> float:
    """Mean over images and steps of p(x) − p(x_k)."""
    return float((curves[:, :1] - curves).mean())


def srg(morf: np.ndarray, lerf: np.ndarray) -> float:
    """Symmetric relevance gain: area under LeRF − area under MoRF = AOPC(MoRF) − AOPC(LeRF)."""
    return float(lerf.mean() - morf.mean())
