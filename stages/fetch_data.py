"""DVC stage fetch_data: load the configured source and write the seeded train/val/test split."""

import mlflow

from impactx import data, layout, tracking
from impactx.params import load_params
from impactx.stage import run_stage


def main():
    params = load_params()
    ds = data.prepare(params.data, params.seed)
    data.save(ds, layout.PREPARED)
    with tracking.stage_run("fetch_data", params):
        tracking.log_params_section(params, "seed", "data")
        mlflow.log_metrics({f"{k}_images": v for k, v in ds.info.sizes.items()})
        mlflow.log_artifact(str(layout.PREPARED / layout.INFO))
    print(f"fetch_data: {ds.info.source} {list(ds.image_shape)} sizes {ds.info.sizes} -> {layout.PREPARED}")


if __name__ == "__main__":
    run_stage(main)
