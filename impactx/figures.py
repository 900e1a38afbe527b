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


def explanation_grid(
    images: np.ndarray,
    maps: dict[str, np.ndarray],
    titles: list[str],
    path: Path,
    cell_titles: dict[str, list[str]] | None = None,
) -> None:
    """One row per image (its title: the true class), the image, then each map (columns headed by their
    name; `cell_titles` puts a line over each of a column's cells, e.g. the model's predicted class). Maps
    are summed over channels. Signed maps (SHAP, D(LEP(x))) are divided by their own max |value|, as
    explanations of different images differ in scale by orders of magnitude, on one diverging scale centred
    on 0 (red: evidence for the class, blue: against); maps with no sign (attention) share their column's
    range. Each column's colour bar is drawn under it."""
    n, cols = len(images), 1 + len(maps)
    cell_titles = cell_titles or {}
    fig, axes = plt.subplots(n, cols, figsize=(2.3 * cols, 2.3 * n + 0.8), squeeze=False)
    maps = {name: m.astype(np.float32) for name, m in maps.items()}
    for name, m in list(maps.items()):  # a signed map on ±1 of its own max |value|, summed over channels
        if m.sum(1).min() < 0:
            peak = np.abs(m.sum(1)).max(axis=(1, 2))[:, None, None, None]
            maps[name] = m / np.where(peak > 0, peak, 1)
    scales = {name: _scale(m.sum(1)) for name, m in maps.items()}
    for i in range(n):
        rgb = images[i].transpose(1, 2, 0).squeeze()
        axes[i, 0].imshow(rgb, cmap="gray" if rgb.ndim == 2 else None)
        axes[i, 0].set_title(titles[i], fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            shown = _show_map(axes[i, j], m[i], scale=scales[name])
            lines = ([name] if i == 0 else []) + ([cell_titles[name][i]] if name in cell_titles else [])
            axes[i, j].set_title("\n".join(lines), fontsize=7)
            if i == n - 1:
                bar = fig.colorbar(shown, ax=axes[:, j], orientation="horizontal", fraction=0.04, pad=0.02)
                bar.ax.tick_params(labelsize=6)
                signed = scales[name]["cmap"] == "bwr"
                bar.set_label("against ←→ for the class (÷ max |map|)" if signed else "attention", fontsize=6)
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


Panel = tuple[dict[str, np.ndarray], dict[str, float], dict[str, np.ndarray]]  # curves, AOPCs, std over seeds


def removal_plot(fractions: np.ndarray, panels: dict[str, Panel], path: Path) -> None:
    """One panel per removal order ("MoRF", "LeRF"): the mean curve of each map, its AOPC in the legend,
    and the std over seeds at each fraction as a band around it (maps with one seed: no band)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, (order, (curves, aopcs, spread)) in zip(axes[0], panels.items(), strict=True):
        for name, c in curves.items():
            line = ax.plot(fractions, c, marker="o", ms=3, label=f"{name} (AOPC {aopcs[name]:.3f})")[0]
            if name in spread:
                ax.fill_between(fractions, c - spread[name], c + spread[name], color=line.get_color(), alpha=0.15, lw=0)
        first = "most" if order == "MoRF" else "least"
        ax.set_xlabel(f"fraction of patches replaced ({first} relevant first)")
        ax.set_title(f"{order}: mean over seeds" + (", band ± std" if spread else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("probability of predicted class")
    _save(fig, path)


def comparison_figures(ds, records: list[dict], rows: list[str], params) -> None:
    """The compare stage's figures, where layout puts them: the first seed's maps on the first MoRF images
    (the paper's Figs. 3–5: each trained method's post-hoc SHAP beside its own map, every cell titled with
    that model's predicted class), and the mean MoRF and LeRF curves with their spread over seeds."""
    idx, x = morf_subset(ds, params)
    seed, n = params.seeds[0], min(params.evaluate.figure_images, len(idx))
    maps, cell_titles = {}, {}
    for m in rows:
        saved, label = np.load(layout.result_maps(m, seed)), methods.get(m).label
        pred = [f"pred: {ds.classes[k]}" for k in saved["pred"][:n]]
        if m in params.methods and not methods.get(m).post_hoc:  # the same model, explained post hoc
            maps[f"{label}: SHAP post hoc"], cell_titles[f"{label}: SHAP post hoc"] = saved["shap"][:n], pred
        maps[label], cell_titles[label] = saved["maps"][:n], pred
    titles = [f"true: {ds.classes[ds.test.y[i]]}" for i in idx[:n]]
    explanation_grid(x[:n].numpy(), maps, titles, layout.FIGURES["explanations"], cell_titles)
    panels = {}
    for order, title in (("morf", "MoRF"), ("lerf", "LeRF")):
        means = mean_curves(records, rows, order)
        panels[title] = ({k: c for k, (c, _, _) in means.items()}, {k: a for k, (_, a, _) in means.items()},
                         {k: sd for k, (_, _, sd) in means.items() if sd is not None})  # fmt: skip
    removal_plot(np.asarray(records[0]["morf_fractions"]), panels, layout.FIGURES["morf"])
