"""DVC stage finetune@<seed> (stage 1): train the baseline A = Q(M(x)) for one seed."""

import mlflow

from impactx import data, layout, tracking
from impactx.cli import run_stage, stage_args
from impactx.config import load_params
from impactx.io import save_torch
from impactx.model import build_baseline
from impactx.train import resolve_device, seed_everything, train_model


def main():
    seed = stage_args(__doc__).seed
    params = load_params()
    ds, info = data.load(layout.PREPARED)
    device = resolve_device(params.device)
    seed_everything(seed)  # before the model exists: its initial weights come from the seed
    model = build_baseline(params.model, info)
    with tracking.stage_run(f"finetune@{seed}", params, method="baseline", seed=seed):
        tracking.log_params_section(params, "data", "model", "finetune")
        result = train_model(
            model, ds.train, ds.val, params.finetune, device, seed, on_epoch=tracking.epoch_logger(), desc="finetune"
        )
        mlflow.log_metric("best_val_accuracy", result["best_val_accuracy"])
    save_torch(layout.model("baseline", seed), model.cpu().state_dict())


if __name__ == "__main__":
    run_stage(main)
