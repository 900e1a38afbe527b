"""The attribution stage's maps against the exact engine's (issue 22): run in a workspace where the stage
`attribution@<seed>` just ran (studies/recipes/cifar10_attribution_stage_seed0.yaml), with its params.yaml.

It reads the stage's maps (attribution/seed<seed>/maps.npy) and their maps.json (the settings), explains the first --images training images again with the same model, method, options and random
seeds in eager float32 (inference: its defaults, the engine the equality test ties to shap.PartitionExplainer),
and writes how far the stage's maps are: per-map Pearson and the largest difference as a fraction of the
largest |value|. The stage's time is the one it measured itself (its MLflow run's metric `seconds`; maps.json
holds no time, so that re-running the stage gives the same bytes).

    python studies/attribution_vs_exact.py --seed 0 --images 500 --out studies/results/<name>.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path.cwd()))  # the project's impactx, like the stages

from impactx import attribution, data, layout, tracking  # noqa: E402
from impactx.config import InferenceParams  # noqa: E402
from impactx.fidelity import closeness, per_map_pearson  # noqa: E402
from impactx.io import save_json  # noqa: E402
from impactx.params import load_params  # noqa: E402
from impactx.study import head_commit, machine  # noqa: E402
from impactx.teacher import explained_model  # noqa: E402


def stage_time(params, seed: int) -> float:
    """Seconds of the latest attribution@<seed> run in the project's MLflow store."""
    import mlflow

    tracking.use_store(params)
    runs = mlflow.search_runs(experiment_names=[params.mlflow.experiment], filter_string=f"tags.dvc_stage = "
                              f"'attribution@{seed}'", order_by=["start_time DESC"], max_results=1)  # fmt: skip
    if runs.empty:
        raise SystemExit(
            f"no MLflow run of attribution@{seed} in {params.mlflow.tracking_uri}: run the stage here first"
        )
    return float(runs["metrics.seconds"].iloc[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=500, help="the first training images explained again, exactly")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    params = load_params()
    meta_path = layout.attribution_meta(args.seed)
    if not meta_path.exists():
        raise SystemExit(f"{meta_path} not found: run the attribution stage first "
                         "(python -m impactx.study run cifar10_attribution_stage_seed0)")  # fmt: skip
    meta = json.loads(meta_path.read_text())
    stage_maps = np.load(layout.attribution_maps(args.seed), mmap_mode="r")
    ds = data.load(layout.PREPARED)
    model, explained = explained_model(params, ds.info, args.seed)
    model.eval()
    n = args.images
    x, y = data.to_float(ds.train.x[:n]), ds.train.y[:n]
    exact_spec = attribution.Spec.of(params.attribution, InferenceParams())
    t0 = time.perf_counter()
    exact = attribution.attribute(model, x, y, exact_spec, seed=meta["map_seed"], first_index=0)
    exact_seconds = time.perf_counter() - t0
    ours = np.asarray(stage_maps[:n])
    evals = exact_spec.attribution.evals(exact_spec.options)
    stage_seconds = stage_time(params, args.seed)
    images = meta["shape"][0]
    result = {
        "provenance": {"recipe": "studies/recipes/cifar10_attribution_vs_exact_seed0.yaml",
                       "stage_recipe": "studies/recipes/cifar10_attribution_stage_seed0.yaml",
                       "command": "python studies/attribution_vs_exact.py " + " ".join(sys.argv[1:]),
                       "commit": head_commit(), "commit_is": "the code that ran", "machine": machine()},
        "seed": args.seed,
        "explained_model": explained,
        "stage": {
            "settings": {k: v for k, v in meta.items() if k in ("method", "max_evals", "masker", "pool_size",
                                                                 "batch_size", "inference")},
            "images": images,
            "evals_per_image": evals,
            "seconds": stage_seconds,
            "minutes": round(stage_seconds / 60, 1),
            "evals_per_s": round(images * evals / stage_seconds),
        },
        "exact": {"images": n, "seconds": round(exact_seconds, 1), "evals_per_s": round(n * evals / exact_seconds)},
        "stage_vs_exact": {
            "images": n,
            **closeness(exact, ours),
            "maps_with_pearson_below_0.999": int((per_map_pearson(exact, ours) < 0.999).sum()),
            "identical_maps": int(sum(np.array_equal(a, b) for a, b in zip(exact, ours, strict=True))),
        },
    }  # fmt: skip
    print(json.dumps({k: result[k] for k in ("stage", "exact", "stage_vs_exact")}), flush=True)
    save_json(Path(args.out), result)


if __name__ == "__main__":
    main()
