"""DVC stages baseline@<seed> and train@<method>-<seed>: train one method of the registry for one seed.
The baseline is stage 1; every other method is built on stage 1 of its seed (A and its SHAP maps)."""

import mlflow

from impactx import data, layout, methods, tracking
from impactx.params import load_params
from impactx.stage import dvc_stage, run_stage, stage_args
from impactx.train import resolve_device, seed_everything, train_model


def main():
    args = stage_args(__doc__, method=True)
    params = load_params()
    method, seed = methods.get(args.method), args.seed
    settings = method.settings(params)
    ds = data.load(layout.PREPARED)
    stage1 = methods.Stage1.from_layout(ds, params.model, seed, built_on_stage1=method.stage == 2)
    seed_everything(seed)  # before the model exists: initial weights and new layers come from the seed
    model = method.build(stage1, settings)
    with tracking.stage_run(dvc_stage(f"train@{method.name}-{seed}"), params, method=method.name, seed=seed):
        tracking.log_params_section(params, "model", "recipe", "training", method.section)
        tracking.log_datasets(ds, params)
        mlflow.log_params({f"effective.{k}": v for k, v in settings.model_dump(by_alias=True).items()})
        result = train_model(
            model, ds.train, ds.val, settings, device=resolve_device(params.device), seed=seed,
            recipe=params.recipe, maps=stage1.maps_tensor(), on_epoch=tracking.epoch_logger(), desc=method.name,
            engine=params.training,
        )  # fmt: skip
        training = {k: result[k] for k in ("best_val_accuracy", "best_epoch", "epochs_run")}
        mlflow.log_metrics(training)
    methods.save(layout.model(method.name, seed), method.name, settings, model.cpu(), training)


if __name__ == "__main__":
    run_stage(main)
