"""DVC stage evaluate: test accuracy of A and IMPACTX, MoRF curves and AOPC, figures, registry."""

import hashlib

import mlflow
import numpy as np
import torch

from impactx import data, figures, morf, tracking
from impactx.cli import run_stage
from impactx.config import load_params
from impactx.io import save_json
from impactx.model import build_baseline, build_impactx
from impactx.shap_maps import shap_true_class
from impactx.train import accuracy, resolve_device


def main():
    params = load_params()
    p = params.evaluate
    ds, info = data.load("data/prepared")
    device = resolve_device(params.device)
    baseline = build_baseline(params.model.backbone, info)
    baseline.load_state_dict(torch.load("models/baseline.pt", weights_only=True))
    model = build_impactx(build_baseline(params.model.backbone, info), info, params.impactx.latent_dim)
    model.load_state_dict(torch.load("models/impactx.pt", weights_only=True))
    model.to(device).eval()

    acc = {"baseline": accuracy(baseline, ds.test, device), "impactx": accuracy(model, ds.test, device)}

    # MoRF on a seeded test subset, for IMPACTX's own maps, SHAP maps of the same model, and random maps.
    rng = np.random.default_rng(params.seed)
    idx = np.sort(rng.permutation(len(ds.test.y))[: p.morf_images])
    x = data.to_float(ds.test.x[idx])
    with torch.no_grad():
        bs = 256
        parts = [model.explain(x[i : i + bs].to(device)) for i in range(0, len(x), bs)]
    pred = torch.cat([lg.argmax(1).cpu() for lg, _ in parts])
    maps = {
        "impactx": torch.cat([m.float().cpu() for _, m in parts]),
        "shap": torch.from_numpy(shap_true_class(model, x, pred.numpy(), max_evals=p.shap_max_evals,
                                                 batch_size=params.shap.batch_size, masker=params.shap.masker,
                                                 device=device, seed=params.seed)),  # fmt: skip
        "random": torch.rand(x.shape, generator=torch.Generator().manual_seed(params.seed)),
    }
    curves = {k: morf.morf_curves(model, x, m, patch_size=p.patch_size, steps=p.steps, device=device,
                                  seed=params.seed) for k, m in maps.items()}  # fmt: skip
    aopc = {k: morf.aopc(c) for k, c in curves.items()}
    fractions = np.linspace(0, 1, p.steps + 1)

    metrics = {
        "baseline": {"test_accuracy": acc["baseline"]},
        "impactx": {"test_accuracy": acc["impactx"], **{f"aopc_{k}_map": v for k, v in aopc.items()}},
        "test_images": int(len(ds.test.y)),
        "morf_images": int(len(idx)),
    }
    save_json("metrics/metrics.json", metrics)
    rows = [{"fraction": round(float(f), 4), **{k: float(c[:, i].mean()) for k, c in curves.items()}}
            for i, f in enumerate(fractions)]  # fmt: skip
    save_json("plots/morf.json", rows)
    n_fig = min(p.figure_images, len(idx))
    names = info["classes"]
    figures.explanation_grid(x[:n_fig].numpy(), maps["shap"][:n_fig].numpy(), maps["impactx"][:n_fig].numpy(),
                             [f"true {names[ds.test.y[idx[i]]]}, pred {names[pred[i]]}" for i in range(n_fig)],
                             "figures/explanations.png")  # fmt: skip
    figures.morf_plot(fractions, curves, aopc, "figures/morf.png")

    split_id = hashlib.sha256(ds.test.x.tobytes() + ds.test.y.tobytes()).hexdigest()[:16]
    example = x[:2]
    for method, net in (("baseline", baseline), ("impactx", model)):
        registered = f"{params.data.source}-{params.model.backbone}-{method}" if params.mlflow.register_models else None
        with tracking.stage_run("evaluate", params, run_name=method, extra_tags={"method": method}):
            tracking.log_params_section(params, "seed", "model", "evaluate")
            mlflow.log_metrics({k: v for k, v in metrics[method].items()})
            mlflow.log_artifact("figures/morf.png")
            mlflow.log_artifact("figures/explanations.png")
            info_model = tracking.log_model(net, example, registered)
            if registered:
                version = str(info_model.registered_model_version)
                tracking.promote_if_better(registered, version, acc[method],
                                           lambda m: accuracy(m, ds.test, device), split_id)  # fmt: skip

    print(f"evaluate: test accuracy baseline {acc['baseline']:.4f}, impactx {acc['impactx']:.4f}; "
          + ", ".join(f"AOPC {k} {v:.4f}" for k, v in aopc.items()))  # fmt: skip
    print("  metrics: metrics/metrics.json (dvc metrics show)   MoRF: plots/morf.json (dvc plots show)")
    print("  figures: figures/explanations.png figures/morf.png")
    print(f"  MLflow UI: mlflow ui --backend-store-uri {params.mlflow.tracking_uri}  (http://127.0.0.1:5000)")


if __name__ == "__main__":
    run_stage(main)
