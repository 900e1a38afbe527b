"""The λ = 0 control: IMPACTX's architecture and training (its `impactx` section) with the map loss off.
If it matches IMPACTX, the gain came from the extra branch and its training, not from the explanations."""

from __future__ import annotations

from impactx.methods import Stage1, register
from impactx.methods.impactx import build_impactx


@register(
    "impactx_lambda0",
    label="IMPACTX, λ = 0 (control)",
    map_kind="D(LEP(x)), untrained (λ = 0)",
    control_of="impactx",
    fixed={"lambda_": 0.0},
)
def impactx_lambda0(stage1: Stage1, settings):
    return build_impactx(stage1, settings)
