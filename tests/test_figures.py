"""The paper-style figures: one colour scale per method's column, with its bar, each cell's predicted class,
and the MoRF and LeRF spread."""

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
    titles = []
    real_title = plt.Axes.set_title
    monkeypatch.setattr(plt.Axes, "set_title", lambda self, t, **kw: titles.append(t) or real_title(self, t, **kw))
    cells = {"SHAP": ["pred: a", "pred: x", "pred: c"]}
    figures.explanation_grid(
        rng.random((3, 3, 8, 8)), maps, ["true: a", "true: b", "true: c"], tmp_path / "g.png", cells
    )
    assert titles[:3] == ["true: a", "SHAP\npred: a", "attention"] and "pred: x" in titles  # header on row 0
    # one bar a column: signed maps on ±1 of each image's own max |map|, attention on the column's range
    expected = [(-1, 1), (maps["attention"].min(), maps["attention"].max())]
    assert np.allclose(bars, expected, rtol=1e-6)
    assert Image.open(tmp_path / "g.png").size[1] > 300


def test_the_removal_plot_draws_morf_and_lerf_with_the_spread_over_seeds(tmp_path, monkeypatch):
    bands, panels = [], []
    real = plt.Axes.fill_between
    monkeypatch.setattr(
        plt.Axes, "fill_between", lambda self, x, lo, hi, **kw: bands.append(hi - lo) or real(self, x, lo, hi, **kw)
    )
    real_title = plt.Axes.set_title
    monkeypatch.setattr(plt.Axes, "set_title", lambda self, t, **kw: panels.append(t) or real_title(self, t, **kw))
    f = np.linspace(0, 1, 5)
    morf = ({"A": 1 - f, "B": 1 - f}, {"A": 0.5, "B": 0.5}, {"A": np.full(5, 0.1)})
    lerf = ({"A": f, "B": f}, {"A": 0.5, "B": 0.5}, {"A": np.full(5, 0.2)})
    figures.removal_plot(f, {"MoRF": morf, "LeRF": lerf}, tmp_path / "m.png")
    assert [t.split(":")[0] for t in panels] == ["MoRF", "LeRF"]
    # ± std for A in each panel; B has one seed: no band
    assert len(bands) == 2 and np.allclose(bands[0], 0.2) and np.allclose(bands[1], 0.4)
