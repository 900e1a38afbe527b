"""IMPACTX, stage 2: M frozen from stage 1; LEP, D and C trained on CE(y, C(m, z)) + λ·MSE(r, D(z))
(impactx.model). Its map is D(LEP(x)), from the same forward pass as the class."""

from __future__ import annotations

from pydantic import Field

from impactx.config import TrainParams
from impactx.methods import Stage1, register
from impactx.model import build_impactx


class ImpactxParams(TrainParams):
    lambda_: float = Field(1.0, ge=0, alias="lambda")  # weight of the map loss; the paper's grid is 0.2-1.4
    latent_dim: int = Field(512, gt=0)  # size of z = sigmoid(FC(...)), the LEP's output


@register("impactx", label="IMPACTX", map_kind="D(LEP(x))", params=ImpactxParams)
def impactx(stage1: Stage1, settings: ImpactxParams):
    return build_impactx(stage1.baseline(), stage1.info, settings.latent_dim, settings.lambda_)
