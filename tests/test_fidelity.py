import numpy as np
import pytest

from impactx.fidelity import agreement, fidelity


def test_agreement_scores_of_known_maps():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(6, 3, 8, 8))
    assert agreement(teacher, teacher) == pytest.approx({"pearson": 1, "spearman": 1, "iou_top": 1})
    assert agreement(3 * teacher + 1, teacher) == pytest.approx({"pearson": 1, "spearman": 1, "iou_top": 1})
    flipped = agreement(-teacher, teacher)
    assert flipped["pearson"] == pytest.approx(-1) and flipped["iou_top"] == 0
    noise = agreement(rng.normal(size=teacher.shape), teacher)
    assert abs(noise["pearson"]) < 0.1 and noise["iou_top"] < 0.2
    assert agreement(np.zeros_like(teacher), teacher)["pearson"] == 0  # a constant map ranks nothing


def test_a_map_that_only_knows_the_class_scores_like_the_class_mean_floor():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    class_maps = rng.normal(size=(2, 3, 8, 8))
    teacher = class_maps[labels] + rng.normal(size=(40, 3, 8, 8))  # class part + image-specific part
    wrong = (labels + rng.binomial(1, 0.3, 40)) % 2  # a classifier right 70% of the time
    floors = {
        "class_mean": class_maps[labels],
        "class_mean_pred": class_maps[wrong],
        "random": rng.normal(size=teacher.shape),
    }
    f = fidelity(class_maps[labels], teacher, floors)
    assert f["map"] == f["class_mean"] and f["class_mean"]["pearson"] > f["random"]["pearson"] + 0.3
    assert f["class_mean"]["pearson"] > f["class_mean_pred"]["pearson"]  # the oracle floor knows the label
    better = fidelity(teacher, teacher, floors)
    assert better["map"]["pearson"] > better["class_mean"]["pearson"]
