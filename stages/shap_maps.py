"""DVC stage shap@<seed>: SHAP maps of A (stage 1 of that seed) for the true class of every training
image, in resumable shards. Every method of that seed trains on these maps."""

import time
from importlib.metadata import version

import mlflow

from impactx import data, layout, methods, shap_maps, tracking
from impactx.cli import run_stage, stage_args
from impactx.config import load_params
from impactx.train import resolve_device


def runner(p):
    if p.executor == "dask":
        from impactx.fanout import dask_runner

        return dask_runner(address=p.dask_address, workers=p.workers, gpus_per_shard=p.gpus_per_shard)
    return shap_maps.local_runner(p.workers)


def main():
    seed = stage_args(__doc__).seed
    params = load_params()
    p = params.shap
    shap_maps.check_masker(p.masker)
    ds = data.load(layout.PREPARED)
    _, model = methods.load(layout.model("baseline", seed), ds.info, params.model)
    with tracking.stage_run(f"shap@{seed}", params, seed=seed):
        tracking.log_params_section(params, "shap")
        t0 = time.perf_counter()
        maps, work = shap_maps.compute_maps(
            model, ds.train.x, ds.train.y, max_evals=p.max_evals, batch_size=p.batch_size, masker=p.masker,
            shard_size=p.shard_size, seed=seed, device=resolve_device(params.device), work_root=layout.SHAP_WORK,
            pool=p.pool_size, runner=runner(p),
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        rate = len(maps) * p.max_evals / seconds
        meta = {
            "explainer": "impactx.shap_maps.partition_shap (values of shap.PartitionExplainer)",
            "shap_version": version("shap"),
            "tie_break_seed": "np.random.RandomState([seed, image index])",
            "masker": p.masker,
            "max_evals": p.max_evals,
            "batch_size": p.batch_size,
            "seed": seed,
            "output": "softmax probability of the true class",
            "shape": list(maps.shape),
            "dtype": "float32",
            "values": "raw SHAP values; scaled per image by max |value| before training (impactx.shap_maps.scale_maps)",
            "seconds_this_run": round(seconds, 2),
        }
        shap_maps.save_maps(maps, meta, seed)
        mlflow.log_metrics({"seconds": seconds, "images": len(maps), "evals_per_s": rate})
    shap_maps.discard_work(work)
    print(
        f"shap: {len(maps)} maps ({p.masker}, max_evals={p.max_evals}) in {seconds:.1f}s ({rate:,.0f} evals/s) -> {layout.shap_maps(seed)}"
    )


if __name__ == "__main__":
    run_stage(main)
