"""DVC stage finetune (stage 1): train the baseline A = Q(M(x)) and log it to MLflow."""

import mlflow

from impactx import data, tracking
from impactx.cli import run_stage
from impactx.config import load_params
from impactx.io import save_json, save_torch
from impactx.model import build_baseline
from impactx.train import resolve_device, seed_everything, train_classifier


def main():
    params = load_params()
    ds, info = data.load("data/prepared")
    device = resolve_device(params.device)
    seed_everything(params.seed)  # before the model exists: its initial weights come from the seed
    model = build_baseline(params.model.backbone, info)
    with tracking.stage_run("finetune", params, extra_tags={"method": "baseline"}):
        tracking.log_params_section(params, "seed", "data", "model", "finetune")
        result = train_classifier(
            model, ds.train, ds.val, params.finetune, device, params.seed, on_epoch=tracking.epoch_logger()
        )
        mlflow.log_metric("best_val_accuracy", result["best_val_accuracy"])
    save_torch("models/baseline.pt", model.cpu().state_dict())
    save_json("metrics/finetune.json", {"best_val_accuracy": result["best_val_accuracy"]})


if __name__ == "__main__":
    run_stage(main)
