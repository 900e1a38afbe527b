"""DVC stage train_impactx (stage 2): M frozen; train LEP, decoder D and classifier C on CE + λ·MSE."""

import mlflow
import numpy as np
import torch

from impactx import data, tracking
from impactx.cli import run_stage
from impactx.config import load_params
from impactx.io import save_json, save_torch
from impactx.model import build_baseline, build_impactx
from impactx.shap_maps import scale_maps
from impactx.train import resolve_device, seed_everything, train_impactx


def main():
    params = load_params()
    ds, info = data.load("data/prepared")
    device = resolve_device(params.device)
    baseline = build_baseline(params.model.backbone, info)
    baseline.load_state_dict(torch.load("models/baseline.pt", weights_only=True))
    maps = torch.from_numpy(scale_maps(np.load("shap/maps.npy")))
    seed_everything(params.seed)  # LEP head, decoder and C are initialised from the seed
    model = build_impactx(baseline, info, params.impactx.latent_dim)
    with tracking.stage_run("train_impactx", params, extra_tags={"method": "impactx"}):
        tracking.log_params_section(params, "seed", "model", "impactx")
        result = train_impactx(
            model, ds.train, maps, ds.val, params.impactx, device, params.seed, on_epoch=tracking.epoch_logger()
        )
        mlflow.log_metric("best_val_accuracy", result["best_val_accuracy"])
    save_torch("models/impactx.pt", model.cpu().state_dict())
    save_json("metrics/train_impactx.json", {"best_val_accuracy": result["best_val_accuracy"]})


if __name__ == "__main__":
    run_stage(main)
