"""The paper-style figures: one colour scale per method's column, with its bar, and the MoRF spread."""

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from impactx import figures


def test_a_column_shares_one_scale_and_shows_its_colour_bar(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    maps = {"SHAP": rng.normal(size=(3, 3, 8, 8)), "attention": rng.random((3, 1, 8, 8))}
    bars = []
    real = plt.Figure.colorbar
    monkeypatch.setattr(
        plt.Figure, "colorbar", lambda self, im, **kw: bars.append(im.get_clim()) or real(self, im, **kw)
    )
    figures.explanation_grid(rng.random((3, 3, 8, 8)), maps, ["true: a", "true: b", "true: c"], tmp_path / "g.png")
    signed = np.abs(maps["SHAP"].sum(1)).max()
    expected = [(-signed, signed), (maps["attention"].min(), maps["attention"].max())]  # one bar a column
    assert np.allclose(bars, expected, rtol=1e-6)
    assert Image.open(tmp_path / "g.png").size[1] > 300


def test_the_morf_plot_draws_the_spread_over_seeds(tmp_path, monkeypatch):
    bands = []
    real = plt.Axes.fill_between
    monkeypatch.setattr(
        plt.Axes, "fill_between", lambda self, x, lo, hi, **kw: bands.append(hi - lo) or real(self, x, lo, hi, **kw)
    )
    f = np.linspace(0, 1, 5)
    figures.morf_plot(f, {"A": 1 - f, "B": 1 - f}, {"A": 0.5, "B": 0.5}, tmp_path / "m.png", {"A": np.full(5, 0.1)})
    assert len(bands) == 1 and np.allclose(bands[0], 0.2)  # ± std for A; B has one seed: no band
