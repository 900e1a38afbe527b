"""A one-channel image folder through a whole `dvc repro` (its own project: the shared one of
test_pipeline.py is not touched)."""

import json

import numpy as np
import pytest
from conftest import run, tiny_project


@pytest.mark.e2e
def test_a_grey_image_folder_runs_through_every_stage(tmp_path):
    """One-channel PNGs (PIL mode L) stay one channel through stage 1, SHAP, every method, evaluation and
    the table; the attribution stage used to stop with a traceback after stage 1 had trained."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = tmp_path / "grey"
    for k, name in enumerate(("bright", "dark", "edge")):
        (images / name).mkdir(parents=True)
        for i in range(24):
            a = rng.integers(0, 90, (16, 16)) + 80 * k  # a class is a brightness band
            Image.fromarray(a.astype(np.uint8)).save(images / name / f"{i}.png")
    root = tiny_project(tmp_path / "proj", seeds=[0], controls=[], data={"source": "imagefolder", "path": str(images)})
    run(["dvc", "repro"], root)
    info = json.loads((root / "data" / "prepared" / "info.json").read_text())
    assert info["image_shape"] == [1, 16, 16]
    maps = np.load(root / "attribution" / "seed0" / "maps.npy")
    assert maps.shape[1:] == (1, 16, 16) and np.isfinite(maps).all() and np.abs(maps).sum() > 0
    table = json.loads((root / "metrics" / "comparison.json").read_text())
    assert table  # compare ran over every method
