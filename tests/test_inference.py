"""The inference path (impactx.inference): float32 eager is the model itself, bfloat16 and channels_last
stay close to it, a failing compile falls back to eager with one warning, and SHAP maps made through it
stay close to the exact ones."""

import logging

import numpy as np
import pytest
import torch
from conftest import shap_spec, tiny_model

from impactx import inference
from impactx.attribution import Spec, attribute
from impactx.config import InferenceParams
from impactx.fidelity import per_map_pearson

X = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def probs(net) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(net(X), 1)


def test_float32_eager_is_the_model_itself():
    model = tiny_model()
    assert inference.prepare(model, InferenceParams()) is model
    assert inference.prepare(model, None) is model


@pytest.mark.parametrize(
    "settings,tol",
    [
        (InferenceParams(channels_last=True), 1e-6),
        (InferenceParams(dtype="bfloat16"), 2e-2),
        (InferenceParams(dtype="bfloat16", channels_last=True), 2e-2),
    ],  # fmt: skip
)
def test_bfloat16_and_channels_last_stay_close_and_return_float32(settings, tol):
    model = tiny_model()
    exact = probs(model)
    net = inference.prepare(tiny_model(), settings)
    with torch.no_grad():
        assert net(X).dtype == torch.float32
    assert (probs(net) - exact).abs().max() < tol


def test_a_failing_compile_warns_once_and_runs_eager(monkeypatch, caplog):
    class Broken(torch.nn.Module):  # what torch.compile returns: a module that compiles on its first call
        def forward(self, x):
            raise RuntimeError("inductor cannot lower this op\ndetails...")

    def broken(model, **kw):
        return Broken()

    monkeypatch.setattr(torch, "compile", broken)
    net = inference.prepare(tiny_model(), InferenceParams(compile=True))
    with caplog.at_level(logging.WARNING, logger="impactx"):
        got = probs(net)
        again = probs(net)
    assert torch.equal(got, probs(tiny_model())) and torch.equal(again, got)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "inference.compile: torch.compile failed (RuntimeError: inductor cannot lower this op); running eager"
    ]


def test_compiled_float32_matches_eager_and_compiles_one_graph(tmp_path, monkeypatch):
    """Every call runs the compiled graph's one batch shape: the SHAP engine's rounds (of varying rows),
    a call with fewer rows (padded) and one with more (in chunks) compile nothing new, within a call or in
    the next one, and the padding rows never reach the outputs."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    counters.clear()
    net = inference.prepare(tiny_model(), InferenceParams(compile=True), batch=8)
    assert (probs(net) - probs(tiny_model())).abs().max() < 1e-5  # 12 rows: one chunk of 8, one padded
    with torch.no_grad():
        assert net(X[:3]).shape == (3, 4) and torch.allclose(net(X[:3]), net(X)[:3], atol=1e-6)
    y = np.arange(len(X)) % 4
    exact_spec = shap_spec(max_evals=200)
    exact = attribute(tiny_model(), X, y, exact_spec, seed=0)
    spec = Spec(exact_spec.method, exact_spec.options, exact_spec.batch_size, InferenceParams(compile=True))
    model = tiny_model()
    compiled = attribute(model, X, y, spec, seed=0)
    assert np.abs(compiled - exact).max() <= 1e-5 * np.abs(exact).max()
    assert counters["stats"]["unique_graphs"] == 2  # batch 8 above, the SHAP engine's batch here
    again = attribute(model, X, y, spec, seed=0)
    assert counters["stats"]["unique_graphs"] == 2 and np.array_equal(again, compiled)


def test_bfloat16_shap_maps_stay_close_to_float32():
    """The maps of the attribution stage through bfloat16 autocast: per-map Pearson and the largest
    difference as a fraction of the largest |value|, against the exact float32 maps."""
    y = np.arange(len(X)) % 4
    exact_spec = shap_spec(max_evals=200)
    exact = attribute(tiny_model(), X, y, exact_spec, seed=0)
    bf16 = Spec(exact_spec.method, exact_spec.options, exact_spec.batch_size, InferenceParams(dtype="bfloat16"))
    fast = attribute(tiny_model(), X, y, bf16, seed=0)
    assert per_map_pearson(exact, fast).min() > 0.99
    assert np.abs(exact - fast).max() / np.abs(exact).max() < 0.1
    assert bf16.describe()["inference"] == {"compile": False, "dtype": "bfloat16", "channels_last": False}
    assert "inference" not in exact_spec.describe()  # float32 eager: maps.json as before


def test_morf_curves_through_the_compiled_model_match_eager_with_one_graph(tmp_path, monkeypatch):
    """The evaluate stage's removal curves through inference.prepare, compiled for their own rows per pass."""
    from torch._dynamo.utils import counters

    from impactx import morf

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    counters.clear()
    x = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # a full chunk, then 8 images
    maps = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    kw = {"patch_size": 4, "steps": 4, "device": torch.device("cpu"), "seed": 0}
    exact = morf.removal_curves(tiny_model(), x, maps, **kw)
    net = inference.prepare(tiny_model(), InferenceParams(compile=True), batch=morf.rows_per_pass(4))
    compiled = morf.removal_curves(net, x, maps, order="morf", **kw)
    lerf = morf.removal_curves(net, x, maps, order="lerf", **kw)
    assert np.abs(compiled - exact).max() < 1e-5 and lerf.shape == exact.shape
    assert counters["stats"]["unique_graphs"] == 1
