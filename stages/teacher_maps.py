"""DVC stage teacher@<seed>: the training maps' R (SHAP by default) of A, or of attribution.teacher, for
the TRUE class of the held-out MoRF images: the target every method's map is compared with
(impactx.fidelity). A derived array, like the figures: no MLflow run."""

from impactx import attribution, data, layout
from impactx.evaluation import morf_subset
from impactx.io import save_npy
from impactx.params import load_params
from impactx.stage import run_stage, stage_args
from impactx.teacher import explained_model
from impactx.train import resolve_device


def main():
    seed = stage_args(__doc__).seed
    params = load_params()
    ds = data.load(layout.PREPARED)
    model, explained = explained_model(params, ds.info, seed)
    idx, x = morf_subset(ds, params)
    spec = attribution.Spec.of(params.attribution, params.inference)
    maps = attribution.attribute(model, x, ds.test.y[idx], spec, seed=attribution.map_seed(params, seed),
                                 device=resolve_device(params.device))  # fmt: skip
    save_npy(layout.teacher_maps(seed), maps)
    print(
        f"teacher: {spec.method} of {explained} for the true class of {len(idx)} held-out images -> {layout.teacher_maps(seed)}"
    )


if __name__ == "__main__":
    run_stage(main)
