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


def test_closeness_gives_the_lowest_pearson_and_the_largest_difference_relative_to_the_reference():
    from impactx.fidelity import closeness

    ref = np.arange(24, dtype=np.float64).reshape(2, 3, 2, 2) - 10  # max |value| 13
    other = ref.copy()
    other[1, 0, 0, 0] += 1.3  # one value off by 10% of the largest
    out = closeness(ref, other)
    assert out["max_abs_diff_relative"] == pytest.approx(0.1)
    assert (
        out["min_pearson"] < 1 and out["median_pearson"] < 1 and closeness(ref, ref)["min_pearson"] == pytest.approx(1)
    )
