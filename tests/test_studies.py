"""The study scripts' own logic on tiny inputs: the duplicate-image census and the λ grid's choice."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from impactx import ImpactXError

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def script(name):
    spec = importlib.util.spec_from_file_location(name, STUDIES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_census_finds_an_image_under_two_labels_and_in_both_splits(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(4)]
    layout = {"train/baby/a.png": 0, "train/girl/a.png": 0, "train/girl/b.png": 1, "test/baby/c.png": 1,
              "test/girl/d.png": 2, "train/baby/e.png": 3}  # fmt: skip
    for rel, i in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        images[i].save(tmp_path / rel)
    out = tmp_path / "census.json"
    script("duplicates").main(["--root", str(tmp_path), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["images"] == {"train": 4, "test": 2} and result["groups"] == 2
    assert result["groups_with_two_labels"] == 2 and result["groups_across_train_and_test"] == 1
    assert result["test_images_with_a_training_copy"] == 1
    assert result["rows"][0]["files"] == "test/baby/c.png, train/girl/b.png"
    with pytest.raises(ImpactXError, match="no PNGs under"):
        script("duplicates").census(tmp_path / "train")


def test_the_grid_chooses_lambda_on_validation_only_once_every_cell_ran():
    grid = script("lambda_grid")
    row = lambda seed, lam, val: {"seed": seed, "lambda": lam, "best_val_accuracy": val,  # noqa: E731
                                  "baseline_val_accuracy": 0.5}  # fmt: skip
    rows = [row(0, 0.2, 0.60), row(0, 1.0, 0.62), row(1, 0.2, 0.64)]
    partial = grid.summary(rows, [0, 1], [0.2, 1.0])
    assert not partial["complete"] and partial["chosen_lambda"] is None  # λ = 1.0 lacks seed 1
    assert partial["per_lambda"]["0.2"] == pytest.approx({"seeds": 2, "val_accuracy": 0.62, "val_minus_baseline": 0.12})
    done = grid.summary([*rows, row(1, 1.0, 0.61)], [0, 1], [0.2, 1.0])
    assert done["complete"] and done["chosen_lambda"] == 0.2  # 0.62 against 0.615
    assert done["spread_over_lambdas"] == pytest.approx(0.005)
    tie = grid.summary([row(0, 0.2, 0.6), row(0, 1.0, 0.6)], [0], [0.2, 1.0])
    assert tie["chosen_lambda"] == 0.2  # a tie goes to the smaller λ
