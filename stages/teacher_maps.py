"""DVC stage teacher@<seed>: SHAP of A for the TRUE class of the held-out MoRF images, the target every
method's map is compared with (impactx.fidelity). A derived array, like the figures: no MLflow run."""

from impactx import data, layout, methods
from impactx.cli import run_stage, stage_args
from impactx.config import load_params
from impactx.evaluation import morf_subset
from impactx.io import save_npy
from impactx.shap_maps import partition_shap
from impactx.train import resolve_device


def main():
    seed = stage_args(__doc__).seed
    params = load_params()
    p = params.shap
    ds = data.load(layout.PREPARED)
    _, model = methods.load(layout.model("baseline", seed), ds.info, params.model)
    idx, x = morf_subset(ds, params)
    maps = partition_shap(
        model, x, ds.test.y[idx], max_evals=p.max_evals, batch_size=p.batch_size, masker=p.masker, seed=seed,
        pool=p.pool_size, device=resolve_device(params.device),
    )  # fmt: skip
    save_npy(layout.teacher_maps(seed), maps)
    print(f"teacher: SHAP of A for the true class of {len(idx)} held-out images -> {layout.teacher_maps(seed)}")


if __name__ == "__main__":
    run_stage(main)
