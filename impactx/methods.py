"""The stage-2 methods compared with the baseline A, each built from A (or, for ABN, from A's initial
weights) and the SHAP maps of stage 1, with its own loss:

    impactx          C(M(x), LEP(x)) and D(LEP(x)); CE + λ·MSE(r, D(LEP(x)))
    impactx_lambda0  the same model and training with λ = 0: the extra branch's capacity without the maps
    abn              attention branch network; L_per + L_att            (impactx/abn.py)
    wae              explanation-encoder attention; CE                  (impactx/wae.py)

Every model has forward(x) → logits and explain(x) → (logits, explanation map at input size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from impactx.abn import abn_loss, build_abn
from impactx.config import Params, TrainParams
from impactx.model import build_baseline, build_impactx, impactx_loss
from impactx.wae import build_wae

MAP_KIND = {
    "baseline": "SHAP of A, post hoc",
    "impactx": "D(LEP(x))",
    "impactx_lambda0": "D(LEP(x)), untrained (λ = 0)",
    "abn": "attention map A(x)",
    "wae": "weighted average explanation e(x)",
}


def train_params(method: str, params: Params) -> TrainParams:
    return {"impactx": params.impactx, "impactx_lambda0": params.impactx, "abn": params.abn, "wae": params.wae}[method]


def lambda_of(method: str, params: Params) -> float:
    return 0.0 if method == "impactx_lambda0" else params.impactx.lambda_


def build(method: str, params: Params, info: dict, baseline_checkpoint: str | Path, maps: np.ndarray, labels: np.ndarray):
    """The untrained stage-2 model: from A's checkpoint (impactx, wae) or A's initial weights (abn)."""
    return _build(method, params.model, params, info, baseline_checkpoint, maps, labels)


def load(method: str, params: Params, info: dict, checkpoint: str | Path):
    """A trained stage-2 model: the bare architecture (no download, zero class maps), then its state_dict."""
    bare = params.model.model_copy(update={"pretrained": False})
    zeros = np.zeros((1, *info["image_shape"]), np.float32), np.zeros(1, np.int64)
    model = _build(method, bare, params, info, None, *zeros)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return model


def _build(method, model_params, params: Params, info, baseline_checkpoint, maps, labels):
    if method == "abn":  # trained from the same initial weights as A, not from A
        return build_abn(build_baseline(model_params, info), info)
    baseline = build_baseline(model_params, info, checkpoint=baseline_checkpoint)
    if method in ("impactx", "impactx_lambda0"):
        return build_impactx(baseline, info, params.impactx.latent_dim)
    if method == "wae":
        return build_wae(baseline, maps, labels, info)
    raise ValueError(f"unknown method {method}")


def step(method: str, params: Params):
    """The loss of one batch (model, x, y, r) → {"loss": ..., parts for logging}."""
    if method in ("impactx", "impactx_lambda0"):
        lam = lambda_of(method, params)

        def impactx_step(model, x, y, r):
            logits, r_hat = model.explain(x)
            loss, ce, mse = impactx_loss(logits, y, r_hat, r, lam)
            return {"loss": loss, "ce": ce, "mse": mse}

        return impactx_step
    if method == "abn":

        def abn_step(model, x, y, r):
            logits, att_logits, _ = model.branches(x)
            loss, per, att = abn_loss(logits, att_logits, y)
            return {"loss": loss, "per": per, "att": att}

        return abn_step

    def ce_step(model, x, y, r):
        return {"loss": F.cross_entropy(model(x), y)}

    return ce_step
