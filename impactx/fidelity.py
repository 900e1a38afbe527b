"""How well a map agrees with its teacher: SHAP of A for the true class, on held-out test images.

Per image, over its C·H·W values: Pearson and Spearman correlation, and the IoU of the two maps' top
`top_fraction` pixels (the most positive values). The same scores of two floors tell what the numbers
mean (impactx.evaluation passes them): the class-mean training map of the true class (a map that knows
only the class, and an oracle: it is given the label), the class-mean map of the model's predicted class
(what the classifier alone gives, with no map of its own), and a random map. A decoder that only learnt
the class mean scores like the predicted-class floor."""

from __future__ import annotations

import numpy as np
from scipy import stats

SCORES = ("pearson", "spearman", "iou_top")


def agreement(maps: np.ndarray, teacher: np.ndarray, top_fraction: float = 0.1) -> dict[str, float]:
    """Mean over images of each score between maps and teacher (both N×C×H×W)."""
    a, b = maps.reshape(len(maps), -1).astype(np.float64), teacher.reshape(len(teacher), -1).astype(np.float64)
    k = max(1, round(top_fraction * a.shape[1]))
    pearson, spearman, iou = [], [], []
    for u, v in zip(a, b, strict=False):
        pearson.append(_corr(u, v))
        spearman.append(_corr(stats.rankdata(u), stats.rankdata(v)))
        top_u, top_v = set(np.argpartition(-u, k - 1)[:k]), set(np.argpartition(-v, k - 1)[:k])
        iou.append(len(top_u & top_v) / len(top_u | top_v))
    return {"pearson": float(np.mean(pearson)), "spearman": float(np.mean(spearman)), "iou_top": float(np.mean(iou))}


def per_map_pearson(maps: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Pearson correlation of each map with its counterpart (both N×...), over its values; NaN where
    either is constant. How close two attribution runs are (bfloat16 against float32, say)."""
    a, b = maps.reshape(len(maps), -1).astype(np.float64), other.reshape(len(other), -1).astype(np.float64)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    norms = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, (a * b).sum(1) / norms, np.nan)


def closeness(reference: np.ndarray, maps: np.ndarray) -> dict:
    """How close `maps` are to `reference` (compiled or bfloat16 maps against eager float32, say): the
    lowest and the median per-map Pearson, and the largest difference as a fraction of max |reference|."""
    pearson = per_map_pearson(reference, maps)
    return {
        "min_pearson": float(np.nanmin(pearson)),
        "median_pearson": float(np.nanmedian(pearson)),
        "max_abs_diff_relative": float(np.abs(reference - maps).max() / np.abs(reference).max()),
    }


def _corr(u: np.ndarray, v: np.ndarray) -> float:
    """Pearson correlation; 0 when either map is constant (it ranks nothing)."""
    su, sv = u.std(), v.std()
    return 0.0 if su == 0 or sv == 0 else float(((u - u.mean()) * (v - v.mean())).mean() / (su * sv))


def fidelity(maps, teacher, floors: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{"map": scores, <floor name>: scores, ...}: the method's map and each floor's, against the teacher."""
    return {"map": agreement(maps, teacher)} | {name: agreement(f, teacher) for name, f in floors.items()}
