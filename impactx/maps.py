"""Attribution maps as data: how a seed's maps are stored, scaled into training targets and averaged.

Scaling (scale_maps): raw values are tiny (their sum is a probability difference spread over C·H·W
pixels), so each map is divided by its own max |value| before it becomes a regression target. Targets
then lie in [-1, 1] with the sign kept (tanh decoder output), every image weighs the same in the MSE,
and relative relevance inside an image, which is all MoRF uses, is unchanged. maps.npy stores raw values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from impactx import ImpactXError, layout
from impactx.io import read, save_json, save_npy


def scale_maps(maps: np.ndarray | torch.Tensor):
    """Per-image max-abs scaling to [-1, 1]; an all-zero map stays zero."""
    lib = torch if isinstance(maps, torch.Tensor) else np
    flat = maps.reshape(len(maps), -1)
    peak = lib.abs(flat).max(1)
    peak = peak.values if lib is torch else peak
    peak = lib.where(peak > 0, peak, lib.ones_like(peak))
    return maps / peak.reshape((-1,) + (1,) * (maps.ndim - 1))


def class_mean_maps(maps: np.ndarray, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """S_k = mean of the (scaled) training maps of class k; zeros for a class with no image."""
    out = np.zeros((num_classes, *maps.shape[1:]), dtype=np.float32)
    for k in range(num_classes):
        if (labels == k).any():
            out[k] = maps[labels == k].mean(0)
    return torch.from_numpy(out)


def paired_with_others(maps: torch.Tensor, labels: np.ndarray, within_class: bool, seed: int) -> torch.Tensor:
    """The shuffled-maps control's targets: every image gets the map of ANOTHER training image, of its own
    class (within_class) or of any class. A seeded single cycle over each group (image order[i] takes the map
    of order[i+1]), so no image keeps its own map; a class with one image keeps it."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    groups = [np.flatnonzero(labels == k) for k in np.unique(labels)] if within_class else [np.arange(len(labels))]
    source = np.arange(len(labels))
    for g in groups:
        order = rng.permutation(g)
        source[order] = np.roll(order, -1)
    return maps[torch.from_numpy(source)]


def save_maps(maps: np.ndarray, meta: dict, seed: int) -> None:
    """maps.npy (raw values) and maps.json (what produced them) of one seed, where layout puts them."""
    save_npy(layout.attribution_maps(seed), maps)
    save_json(layout.attribution_meta(seed), meta)


def load_scaled_maps(path: Path) -> np.ndarray:
    """The training targets: maps.npy scaled per image to [-1, 1] (scale_maps)."""
    if not Path(path).exists():
        raise ImpactXError(f"{path} not found: run the attribution stage of this seed first (dvc repro)")
    return scale_maps(read(Path(path), np.load))
