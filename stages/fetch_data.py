"""DVC stage fetch_data: load the configured source and write the seeded train/val/test split."""

import mlflow

from impactx import data, tracking
from impactx.cli import run_stage
from impactx.config import load_params

OUT = "data/prepared"


def main():
    params = load_params()
    ds = data.prepare(params.data, params.seed)
    info = data.save(ds, OUT, params.data.source)
    with tracking.stage_run("fetch_data", params):
        tracking.log_params_section(params, "seed", "data")
        mlflow.log_metrics({f"{k}_images": v for k, v in info["sizes"].items()})
        mlflow.log_artifact(f"{OUT}/info.json")
    print(f"fetch_data: {params.data.source} {info['image_shape']} sizes {info['sizes']} -> {OUT}")


if __name__ == "__main__":
    run_stage(main)
