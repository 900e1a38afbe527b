"""DVC stage evaluate@<method>: for every seed, accuracy and MoRF/AOPC of the method's own maps (the
baseline's: SHAP of A, post hoc), the MLflow model and the registry (champion by validation accuracy)."""

import mlflow
import numpy as np

from impactx import data, layout, methods, tracking
from impactx.evaluation import evaluate_run
from impactx.io import save_json, save_npz
from impactx.maps import class_mean_maps, load_scaled_maps
from impactx.params import load_params
from impactx.stage import dvc_stage, run_stage, stage_args
from impactx.train import resolve_device


def main():
    name = stage_args(__doc__, method=True, seed=False).method
    params = load_params()
    ds = data.load(layout.PREPARED)
    device = resolve_device(params.device)
    for seed in params.seeds:
        method, model = methods.load(layout.model(name, seed), ds.info, params.model)
        class_maps = class_mean_maps(load_scaled_maps(layout.attribution_maps(seed)), ds.train.y, ds.info.num_classes)
        teacher = np.load(layout.teacher_maps(seed))
        record, figure_maps = evaluate_run(model, method, seed, ds, params, device, teacher, class_maps.numpy())
        record["training"] = methods.training_of(layout.model(name, seed))  # best_epoch, epochs_run
        latency = record.pop("latency", [])  # timings go to MLflow only: results/ stays reproducible
        save_json(layout.result(name, seed), record)
        save_npz(layout.result_maps(name, seed), **figure_maps)
        stage = dvc_stage(f"evaluate@{name}")
        with tracking.stage_run(stage, params, method=name, seed=seed, run_name=f"{stage}-seed{seed}"):
            tracking.log_params_section(params, "model", "evaluate")
            # the method's settings as it trained (a control's fixed λ included), as its train run logs them
            mlflow.log_params(
                {f"effective.{k}": v for k, v in method.settings(params).model_dump(by_alias=True).items()}
            )
            tracking.log_evaluation(record | {"latency": latency}, ds, params, device, layout.model(name, seed))
        print(
            f"evaluate {name} seed {seed}: test accuracy {record['test_accuracy']:.4f}, val {record['val_accuracy']:.4f}, "
            f"AOPC {record['aopc']:.4f} ({record['map']}), random {record['aopc_random']:.4f}"
            + "".join(f"; explain() {t['speedup']:.0f}× faster than SHAP on {t['images']}" for t in latency)
        )


if __name__ == "__main__":
    run_stage(main)
