"""DVC stage attribution@<seed>: the attribution maps R(A, x, y) of A (stage 1 of that seed) for the true
class of every training image, in resumable shards (impactx.shards): the `attribution.method` of
params.yaml, Partition SHAP by default. Every method of that seed trains on these maps."""

import logging
import time
from importlib.metadata import version

import mlflow

from impactx import attribution, data, layout, maps, shards, tracking
from impactx.params import load_params
from impactx.stage import run_stage, stage_args
from impactx.teacher import explained_model
from impactx.train import resolve_device

log = logging.getLogger("impactx.stages.attribution")


def runner(p):
    if p.executor == "dask":
        from impactx.fanout import dask_runner

        return dask_runner(p.dask_address, p.workers, p.gpus_per_shard, p.dask_tls)
    return shards.local_runner(p.workers)


def main():
    seed = stage_args(__doc__).seed
    params = load_params()
    spec = attribution.Spec.of(params.attribution, params.inference)
    ds = data.load(layout.PREPARED)
    model, explained = explained_model(params, ds.info, seed)
    with tracking.stage_run(f"attribution@{seed}", params, seed=seed):
        tracking.log_params_section(params, "attribution", "shards")
        t0 = time.perf_counter()
        map_seed = attribution.map_seed(params, seed)
        others = [layout.attribution_meta(k) for k in params.seeds if k != seed]  # a teacher's maps: computed once
        raw, work = shards.compute_maps(
            model, ds.train.x, ds.train.y, spec, shard_size=params.shards.size, seed=map_seed,
            device=resolve_device(params.device), work_root=layout.ATTRIBUTION_WORK, runner=runner(params.shards),
            reuse=others,
        )  # fmt: skip
        # compute_maps makes its work folder unless it reused another seed's maps: then, the first that matches
        reused = (
            None if work.exists() else next((str(m.parent) for m in others if shards.fingerprint(m) == work.name), None)
        )
        seconds = time.perf_counter() - t0
        rate = len(raw) / seconds
        meta = {
            "method": spec.method,
            "explained_model": explained,
            "explainer": spec.attribution.explainer,
            "versions": {d: version(d) for d in ("shap", "captum")},
            "random_seed": "np.random.RandomState([map_seed, image index]) (SHAP's ties, GradientSHAP's draws)",
            **spec.describe(),
            "seed": seed,
            "map_seed": map_seed,
            "fingerprint": work.name,
            "reused_from": reused,
            "output": f"softmax probability of the true class, of {explained}",
            "shape": list(raw.shape),
            "dtype": "float32",
            "values": "raw attributions; scaled per image by max |value| before training (impactx.maps.scale_maps)",
        }
        maps.save_maps(raw, meta, seed)
        evals = spec.attribution.evals(spec.options)
        mlflow.log_metrics({"seconds": seconds, "images": len(raw), "images_per_s": rate, "evals_per_s": rate * evals})
    shards.discard_work(work)
    print(
        f"attribution: {len(raw)} maps of {explained}{f' (reused from {reused})' if reused else ''}"
        f" ({spec.attribution.explainer}) in {seconds:.1f}s ({rate:,.1f} images/s) -> {layout.attribution_maps(seed)}"
    )


if __name__ == "__main__":
    run_stage(main)
