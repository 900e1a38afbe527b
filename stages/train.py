"""DVC stage train@<method>-<seed> (stage 2): train one comparison method on top of stage 1 of its seed."""

import mlflow
import numpy as np
import torch

from impactx import data, layout, methods, tracking
from impactx.cli import run_stage, stage_args
from impactx.config import load_params
from impactx.io import save_torch
from impactx.shap_maps import scale_maps
from impactx.train import resolve_device, seed_everything, train_model


def main():
    args = stage_args(__doc__, method=True)
    method, seed = args.method, args.seed
    params = load_params()
    ds, info = data.load(layout.PREPARED)
    device = resolve_device(params.device)
    maps = scale_maps(np.load(layout.shap_dir(seed) / "maps.npy"))
    seed_everything(seed)  # new layers are initialised from the seed
    model = methods.build(method, params, info, layout.model("baseline", seed), maps, ds.train.y)
    train_params = methods.train_params(method, params)
    with tracking.stage_run(f"train@{method}-{seed}", params, method=method, seed=seed):
        tracking.log_params_section(params, "model", "impactx" if method.startswith("impactx") else method)
        if method.startswith("impactx"):
            mlflow.log_param("lambda_effective", methods.lambda_of(method, params))
        result = train_model(
            model, ds.train, ds.val, train_params, device, seed, step=methods.step(method, params),
            maps=torch.from_numpy(maps), on_epoch=tracking.epoch_logger(), desc=method,
        )  # fmt: skip
        mlflow.log_metric("best_val_accuracy", result["best_val_accuracy"])
    save_torch(layout.model(method, seed), model.cpu().state_dict())


if __name__ == "__main__":
    run_stage(main)
