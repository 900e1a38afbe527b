"""Figures in the style of the paper's Figs. 3–5: images with each method's map, and MoRF curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from impactx import layout, methods
from impactx.compare import mean_curves
from impactx.evaluation import morf_subset
from impactx.io import atomic_write


def _show_map(ax, m: np.ndarray, alpha: float = 1.0):
    """Signed maps (SHAP, D(LEP(x))): red for the class, blue against, centred on 0. Maps with no sign
    (ABN's attention): their own range, so the structure shows whatever the offset. Returns the image
    (for a colour scale)."""
    h = m.astype(np.float32).sum(0)
    if h.min() < 0:
        v = float(np.abs(h).max()) or 1.0
        return ax.imshow(h, cmap="bwr", vmin=-v, vmax=v, alpha=alpha)
    return ax.imshow(h, cmap="magma", vmin=float(h.min()), vmax=float(h.max()) or 1.0, alpha=alpha)


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda t: fig.savefig(t, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


def explanation_grid(images: np.ndarray, maps: dict[str, np.ndarray], titles: list[str], path: Path) -> None:
    """One row per image: the image, then each method's map."""
    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(2.3 * cols, 2.3 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i].transpose(1, 2, 0).squeeze())
        axes[i, 0].set_title(titles[i], fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            _show_map(axes[i, j], m[i])
            axes[i, j].set_title(name, fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    _save(fig, path)


def explanation_figure(image: np.ndarray, m: np.ndarray | None, title: str, path: Path) -> None:
    """One image (C×H×W in [0, 1]) beside its map overlaid on it, with the map's colour scale (summed
    over channels); the image alone when there is no map."""
    fig, axes = plt.subplots(1, 2 if m is not None else 1, figsize=(6.4 if m is not None else 3, 3), squeeze=False)
    rgb = image.transpose(1, 2, 0).squeeze()
    axes[0, 0].imshow(rgb, cmap="gray" if rgb.ndim == 2 else None)
    axes[0, 0].set_title(title, fontsize=9)
    if m is not None:
        axes[0, 1].imshow(rgb.mean(-1) if rgb.ndim == 3 else rgb, cmap="gray")
        fig.colorbar(_show_map(axes[0, 1], m, alpha=0.6), ax=axes[0, 1], fraction=0.046, pad=0.04)
        axes[0, 1].set_title("map (sum over channels)", fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    _save(fig, path)


def morf_plot(fractions: np.ndarray, curves: dict[str, np.ndarray], aopcs: dict[str, float], path: Path) -> None:
    """Mean MoRF curve per map, AOPC in the legend."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, c in curves.items():
        ax.plot(fractions, c, marker="o", ms=3, label=f"{name} (AOPC {aopcs[name]:.3f})")
    ax.set_xlabel("fraction of patches replaced by noise (most relevant first)")
    ax.set_ylabel("probability of predicted class")
    ax.set_title("MoRF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def comparison_figures(ds, records: list[dict], rows: list[str], params) -> None:
    """The compare stage's figures: the first seed's maps of every method on the first MoRF images, and
    the mean MoRF curves (AOPC in the legend), where layout puts them."""
    idx, x = morf_subset(ds, params)
    seed, n = params.seeds[0], min(params.evaluate.figure_images, len(idx))
    maps = {methods.get(m).label: np.load(layout.result_maps(m, seed))["maps"][:n].astype(np.float32) for m in rows}
    titles = [ds.classes[ds.test.y[i]] for i in idx[:n]]
    explanation_grid(x[:n].numpy(), maps, titles, layout.FIGURES["explanations"])
    means = mean_curves(records, rows)
    curves, aopcs = {k: c for k, (c, _) in means.items()}, {k: a for k, (_, a) in means.items()}
    morf_plot(np.asarray(records[0]["morf_fractions"]), curves, aopcs, layout.FIGURES["morf"])
