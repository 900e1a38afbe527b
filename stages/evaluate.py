"""DVC stage evaluate: test accuracy of A and IMPACTX, MoRF curves and AOPC, figures, registry."""

import hashlib

import mlflow
import torch

from impactx import data, figures, tracking
from impactx.cli import run_stage
from impactx.config import load_params
from impactx.evaluation import evaluate
from impactx.io import save_json
from impactx.model import build_baseline, build_impactx
from impactx.train import accuracy, resolve_device


def main():
    params = load_params()
    ds, info = data.load("data/prepared")
    device = resolve_device(params.device)
    baseline = build_baseline(params.model.backbone, info)
    baseline.load_state_dict(torch.load("models/baseline.pt", weights_only=True))
    model = build_impactx(build_baseline(params.model.backbone, info), info, params.impactx.latent_dim)
    model.load_state_dict(torch.load("models/impactx.pt", weights_only=True))

    ev = evaluate(baseline, model, ds, params, device)
    metrics = ev.metrics()
    save_json("metrics/metrics.json", metrics)
    save_json("plots/morf.json", ev.plot_rows())
    n, names = min(params.evaluate.figure_images, len(ev.labels)), info["classes"]
    titles = [f"true {names[ev.labels[i]]}, pred {names[ev.predictions[i]]}" for i in range(n)]
    figures.explanation_grid(
        ev.images[:n].numpy(), ev.maps["shap"][:n].numpy(), ev.maps["impactx"][:n].numpy(), titles,
        "figures/explanations.png",
    )  # fmt: skip
    figures.morf_plot(ev.fractions, ev.curves, ev.aopc, "figures/morf.png")

    split_id = hashlib.sha256(ds.test.x.tobytes() + ds.test.y.tobytes()).hexdigest()[:16]
    for method, net in (("baseline", baseline), ("impactx", model)):
        name = f"{params.data.source}-{params.model.backbone}-{method}" if params.mlflow.register_models else None
        with tracking.stage_run("evaluate", params, run_name=method, extra_tags={"method": method}):
            tracking.log_params_section(params, "seed", "model", "evaluate")
            mlflow.log_metrics(metrics[method])
            mlflow.log_artifact("figures/morf.png")
            mlflow.log_artifact("figures/explanations.png")
            logged = tracking.log_model(net, ev.images[:2], name)
            if name:
                score = lambda m: accuracy(m, ds.test, device)
                tracking.promote_if_better(
                    name, str(logged.registered_model_version), ev.accuracy[method], score, split_id
                )

    aopc = ", ".join(f"AOPC {k} {v:.4f}" for k, v in ev.aopc.items())
    print(
        f"evaluate: test accuracy baseline {ev.accuracy['baseline']:.4f}, impactx {ev.accuracy['impactx']:.4f}; {aopc}"
    )
    print("  metrics: metrics/metrics.json (dvc metrics show)   MoRF: plots/morf.json (dvc plots show)")
    print("  figures: figures/explanations.png figures/morf.png")
    print(f"  MLflow UI: mlflow ui --backend-store-uri {params.mlflow.tracking_uri}  (http://127.0.0.1:5000)")


if __name__ == "__main__":
    run_stage(main)
