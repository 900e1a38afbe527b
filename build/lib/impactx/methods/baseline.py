"""The baseline A = Q(M(x)), stage 1: cross-entropy from seeded initial (or ImageNet) weights. It has no
map of its own: its row in the table judges SHAP of A for the predicted class, computed post hoc."""

from __future__ import annotations

from impactx.config import TrainParams
from impactx.methods import Stage1, register


@register("baseline", label="Baseline A", map_kind="SHAP of A, post hoc", post_hoc=True, stage=1)
def baseline(stage1: Stage1, settings: TrainParams):
    return stage1.baseline(trained=False)
