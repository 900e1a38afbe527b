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


def _scale(h: np.ndarray) -> dict:
    """imshow's colour settings for maps summed over channels: signed maps (SHAP, D(LEP(x))) on one
    diverging scale centred on 0 (red for the class, blue against); maps with no sign (ABN's attention)
    on their own range, so the structure shows whatever the offset."""
    if h.min() < 0:
        v = float(np.abs(h).max()) or 1.0
        return {"cmap": "bwr", "vmin": -v, "vmax": v}
    return {"cmap": "magma", "vmin": float(h.min()), "vmax": float(h.max()) or 1.0}


def _show_map(ax, m: np.ndarray, alpha: float = 1.0, scale: dict | None = None):
    """The map summed over channels, on `scale` (else its own, _scale). Returns the image (for a colour bar)."""
    h = m.astype(np.float32).sum(0)
    return ax.imshow(h, alpha=alpha, **(scale or _scale(h)))


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda t: fig.savefig(t, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)


def explanation_grid(images: np.ndarray, maps: dict[str, np.ndarray], titles: list[str], path: Path) -> None:
    """One row per image (its title: the true class), the image, then each method's map (columns headed
    by the method). A column shares one colour scale, summed over channels, drawn under it: a diverging
    one centred on 0 for signed maps (red: evidence for the class, blue: against), the map's own range
    for maps with no sign (attention)."""
    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(2.3 * cols, 2.3 * n + 0.8), squeeze=False)
    scales = {name: _scale(m.astype(np.float32).sum(1)) for name, m in maps.items()}
    for i in range(n):
        rgb = images[i].transpose(1, 2, 0).squeeze()
        axes[i, 0].imshow(rgb, cmap="gray" if rgb.ndim == 2 else None)
        axes[i, 0].set_title(titles[i], fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            shown = _show_map(axes[i, j], m[i], scale=scales[name])
            if i == 0:
                axes[i, j].set_title(name, fontsize=8, fontweight="bold")
            if i == n - 1:
                bar = fig.colorbar(shown, ax=axes[:, j], orientation="horizontal", fraction=0.04, pad=0.02)
                bar.ax.tick_params(labelsize=6)
                bar.set_label("against ←→ for the class" if scales[name]["cmap"] == "bwr" else "attention", fontsize=6)
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


def morf_plot(
    fractions: np.ndarray,
    curves: dict[str, np.ndarray],
    aopcs: dict[str, float],
    path: Path,
    spread: dict[str, np.ndarray] | None = None,
) -> None:
    """Mean MoRF curve per map, AOPC in the legend; `spread` (the std over seeds at each fraction) as a
    band around it."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, c in curves.items():
        line = ax.plot(fractions, c, marker="o", ms=3, label=f"{name} (AOPC {aopcs[name]:.3f})")[0]
        if spread is not None and name in spread:
            ax.fill_between(fractions, c - spread[name], c + spread[name], color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("fraction of patches replaced by noise (most relevant first)")
    ax.set_ylabel("probability of predicted class")
    ax.set_title("MoRF" + (": mean over seeds, band ± std" if spread else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def comparison_figures(ds, records: list[dict], rows: list[str], params) -> None:
    """The compare stage's figures: the first seed's maps of every method on the first MoRF images, and
    the mean MoRF curves (AOPC in the legend), where layout puts them."""
    idx, x = morf_subset(ds, params)
    seed, n = params.seeds[0], min(params.evaluate.figure_images, len(idx))
    maps = {methods.get(m).label: np.load(layout.result_maps(m, seed))["maps"][:n].astype(np.float32) for m in rows}
    titles = [f"true: {ds.classes[ds.test.y[i]]}" for i in idx[:n]]
    explanation_grid(x[:n].numpy(), maps, titles, layout.FIGURES["explanations"])
    means = mean_curves(records, rows)
    curves, aopcs = {k: c for k, (c, _) in means.items()}, {k: a for k, (_, a) in means.items()}
    spread = {methods.get(m).label: np.std([r["morf_curve"] for r in records if r["method"] == m], 0) for m in rows
              if sum(r["method"] == m for r in records) > 1}  # fmt: skip
    morf_plot(np.asarray(records[0]["morf_fractions"]), curves, aopcs, layout.FIGURES["morf"], spread)
