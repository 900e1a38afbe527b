"""DVC stage evaluate@<method>-<seed>: accuracy, MoRF/AOPC of the method's own maps, MLflow model and
registry (champion by validation accuracy). Method "baseline" is stage 1's A, with post-hoc SHAP maps."""

import hashlib

import mlflow

from impactx import data, layout, methods, tracking
from impactx.cli import run_stage, stage_args
from impactx.config import load_params
from impactx.data import to_float
from impactx.evaluation import evaluate_run
from impactx.io import save_json, save_npz
from impactx.model import build_baseline
from impactx.train import accuracy, resolve_device


def main():
    args = stage_args(__doc__, method=True)
    method, seed = args.method, args.seed
    params = load_params()
    ds, info = data.load(layout.PREPARED)
    device = resolve_device(params.device)
    if method == "baseline":
        model = build_baseline(params.model, info, checkpoint=layout.model("baseline", seed))
    else:
        model = methods.load(method, params, info, layout.model(method, seed))

    record, figure_maps = evaluate_run(model, method, seed, ds, params, device)
    save_json(layout.result(method, seed), record)
    save_npz(layout.result_maps(method, seed), maps=figure_maps)

    name = f"{params.data.source}-{params.model.backbone}-{method}" if params.mlflow.register_models else None
    split_id = hashlib.sha256(ds.val.x.tobytes() + ds.val.y.tobytes()).hexdigest()[:16]
    stage = f"evaluate_baseline@{seed}" if method == "baseline" else f"evaluate@{method}-{seed}"
    with tracking.stage_run(stage, params, method=method, seed=seed, run_name=f"{method}-seed{seed}"):
        tracking.log_params_section(params, "model", "evaluate")
        mlflow.log_metrics({k: record[k] for k in ("test_accuracy", "val_accuracy", "aopc", "aopc_random")})
        logged = tracking.log_model(model, to_float(ds.test.x[:2]), name)
        if name:
            score = lambda m: accuracy(m, ds.val, device)
            tracking.promote_if_better(name, str(logged.registered_model_version), record["val_accuracy"], score, split_id)
    print(
        f"evaluate {method} seed {seed}: test accuracy {record['test_accuracy']:.4f}, val {record['val_accuracy']:.4f}, "
        f"AOPC {record['aopc']:.4f} ({record['map']}), random {record['aopc_random']:.4f}"
    )


if __name__ == "__main__":
    run_stage(main)
