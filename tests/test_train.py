"""The training recipe: augmentation moves each SHAP map with its image, the cosine schedule, early
stopping on validation accuracy."""

import numpy as np
import pytest
import torch
from conftest import CPU, tiny_model

from impactx import train
from impactx.config import RecipeParams, TrainingParams, TrainParams
from impactx.data import Split


@pytest.mark.parametrize("recipe", [RecipeParams(crop_padding=4), RecipeParams(flip=True),
                                    RecipeParams(crop_padding=3, flip=True)])  # fmt: skip
def test_each_map_is_cropped_and_flipped_with_its_image(recipe):
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.1  # no zero pixel
    r = 2 * x - 0.5  # a map that is a function of its image, pixel by pixel
    xa, ra = train.augment(x, r, recipe, torch.Generator().manual_seed(1))
    assert xa.shape == x.shape and ra.shape == r.shape
    padded = xa == 0  # pixels that came from the zero padding: zero in the map too
    assert torch.equal(ra[padded], torch.zeros_like(ra[padded]))
    assert torch.allclose(ra[~padded], 2 * xa[~padded] - 0.5)  # every other pixel moved with its image
    changed = (xa != x).flatten(1).any(1)
    assert 0 < changed.sum() < len(x) or recipe.crop_padding  # some images kept, some moved
    if recipe.flip and not recipe.crop_padding:
        assert all(torch.equal(xa[i], x[i]) or torch.equal(xa[i], x[i].flip(-1)) for i in range(len(x)))


def test_no_recipe_changes_nothing():
    x = torch.rand(4, 3, 8, 8)
    xa, ra = train.augment(x, None, RecipeParams(), torch.Generator())
    assert xa is x and ra is None


def tiny_split(n, seed):
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8), rng.integers(0, 4, n))


def test_cosine_schedule_and_early_stopping(monkeypatch):
    scores = iter([0.5, 0.6, 0.55, 0.55, 0.9, 0.9])  # best at epoch 2, then two epochs without better
    monkeypatch.setattr(train, "accuracy", lambda *a: next(scores))
    params = TrainParams(epochs=6, batch_size=8, lr=0.01)
    recipe = RecipeParams(schedule="cosine", patience=2, crop_padding=2, flip=True)
    out = train.train_model(tiny_model(), tiny_split(32, 0), tiny_split(8, 1), params, CPU, seed=0, recipe=recipe)
    assert (out["best_epoch"], out["epochs_run"], out["best_val_accuracy"]) == (2, 4, 0.6)
    lrs = [h["lr"] for h in out["history"]]
    assert lrs == pytest.approx([0.01 * (1 + np.cos(np.pi * e / 6)) / 2 for e in range(4)])


def test_a_failing_training_compile_warns_once_and_trains_eager(monkeypatch, caplog):
    import logging

    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("inductor cannot lower this op\ndetails...")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    params = TrainParams(epochs=1, batch_size=8, lr=0.01)
    eager = train.train_model(tiny_model(), tiny_split(32, 0), tiny_split(8, 1), params, CPU, seed=0)
    with caplog.at_level(logging.WARNING, logger="impactx"):
        out = train.train_model(tiny_model(), tiny_split(32, 0), tiny_split(8, 1), params, CPU, seed=0,
                                engine=TrainingParams(compile=True))  # fmt: skip
    assert out["history"][0]["train_loss"] == eager["history"][0]["train_loss"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "training.compile: torch.compile failed (RuntimeError: inductor cannot lower this op); running eager"
    ]
