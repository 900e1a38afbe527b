"""DVC stage attribution@<seed>: the attribution maps R(A, x, y) of A (stage 1 of that seed) for the true class
of every training image, in resumable shards: SHAP Partition by default, or the `attribution.method` of
params.yaml (impactx.attribution). Every method of that seed trains on these maps."""

import time
from importlib.metadata import version

import mlflow

from impactx import attribution, data, layout, shap_maps, tracking
from impactx.cli import run_stage, stage_args
from impactx.config import load_params
from impactx.train import resolve_device


def runner(p):
    if p.executor == "dask":
        from impactx.fanout import dask_runner

        return dask_runner(p.dask_address, p.workers, p.gpus_per_shard, p.dask_tls)
    return shap_maps.local_runner(p.workers)


def main():
    seed = stage_args(__doc__).seed
    params = load_params()
    p, r = params.shap, attribution.settings(params)
    if r["method"] == "shap_partition":
        shap_maps.check_masker(p.masker)
    ds = data.load(layout.PREPARED)
    model, explained = attribution.explained_model(params, ds.info, seed)
    with tracking.stage_run(f"attribution@{seed}", params, seed=seed):
        tracking.log_params_section(params, "attribution", "shap")
        t0 = time.perf_counter()
        map_seed = attribution.map_seed(params, seed)
        others = [layout.attribution_meta(k) for k in params.seeds if k != seed]  # a teacher's maps: computed once
        maps, work = shap_maps.compute_maps(
            model, ds.train.x, ds.train.y, **r, shard_size=p.shard_size, seed=map_seed,
            device=resolve_device(params.device), work_root=layout.ATTRIBUTION_WORK, runner=runner(p), reuse=others,
        )  # fmt: skip
        # compute_maps makes its work folder unless it reused another seed's maps: then, the first that matches
        reused = None if work.exists() else next((str(m.parent) for m in others if shap_maps.fingerprint(m) == work.name), None)
        seconds = time.perf_counter() - t0
        rate = len(maps) / seconds
        meta = {
            "method": r["method"],
            "explained_model": explained,
            "explainer": attribution.EXPLAINERS[r["method"]],
            "versions": {d: version(d) for d in ("shap", "captum")},
            "random_seed": "np.random.RandomState([map_seed, image index]) (SHAP's ties, GradientSHAP's draws)",
            **attribution.used(r),
            "seed": seed,
            "map_seed": map_seed,
            "fingerprint": work.name,
            "reused_from": reused,
            "output": f"softmax probability of the true class, of {explained}",
            "shape": list(maps.shape),
            "dtype": "float32",
            "values": "raw attributions; scaled per image by max |value| before training (impactx.shap_maps.scale_maps)",
            "seconds_this_run": round(seconds, 2),
        }
        shap_maps.save_maps(maps, meta, seed)
        mlflow.log_metrics({"seconds": seconds, "images": len(maps), "images_per_s": rate}
                           | ({"evals_per_s": rate * p.max_evals} if r["method"] == "shap_partition" else {}))
    shap_maps.discard_work(work)
    print(
        f"attribution: {len(maps)} maps of {explained}{f' (reused from {reused})' if reused else ''} ({attribution.EXPLAINERS[r['method']]}) in {seconds:.1f}s ({rate:,.1f} images/s) -> {layout.attribution_maps(seed)}"
    )


if __name__ == "__main__":
    run_stage(main)
