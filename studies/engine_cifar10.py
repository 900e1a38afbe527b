"""The compute settings on real data (issue 22): CIFAR-10, LeNet-5, one seed, as the CIFAR-10 recipe trains it.

1. Training: the baseline A trained --epochs epochs from the same seed with each `training:` setting
   (eager float32, compiled float32; bfloat16 timed over one epoch): seconds per epoch, the best
   validation accuracy (which picks the epoch) and that epoch's test accuracy. The test split chooses
   nothing.
2. Attribution: Partition SHAP of the eager-trained A for the true class at --max-evals evaluations,
   on the first --images training images with the compiled float32 engine (inference.compile: true),
   on the first --compare-images with eager float32 (the exact engine), on the first --bf16-images with
   compiled bfloat16: the
   evaluations/s of each, and how far each is from the exact maps (per-map Pearson, the largest
   difference as a fraction of the largest |value|). The time for all training images is the measured
   rate times their count: an extrapolation, labelled as one.

Run from the project root (the data: ../shared/data/cifar10/train, as studies/recipes/cifar10_recipe.yaml);
results as JSON to --out (docs/results/engine_cifar10_seed0.md):

    python studies/engine_cifar10.py --out studies/results/engine_cifar10_seed0.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path.cwd()))  # the project's impactx, like the stages

from impactx import data  # noqa: E402
from impactx.attribution import Spec, attribute  # noqa: E402
from impactx.attribution.shap_partition import ShapPartitionSettings  # noqa: E402
from impactx.config import DataParams, InferenceParams, ModelParams, RecipeParams, TrainingParams, TrainParams  # noqa: E402
from impactx.data import to_float  # noqa: E402
from impactx.fidelity import closeness  # noqa: E402
from impactx.io import save_json  # noqa: E402
from impactx.model import build_baseline  # noqa: E402
from impactx.study import head_commit, machine  # noqa: E402
from impactx.train import accuracy, seed_everything, train_model  # noqa: E402

RECIPE = RecipeParams(crop_padding=4, flip=True, schedule="cosine")  # studies/recipes/cifar10_recipe.yaml's


def train_one(ds, settings: TrainingParams, epochs: int, seed: int) -> tuple[dict, torch.nn.Module]:
    seed_everything(seed)
    model = build_baseline(ModelParams(), ds.info)
    params = TrainParams(epochs=epochs, batch_size=64, lr=1e-3, weight_decay=5e-4)
    t0 = time.perf_counter()
    out = train_model(model, ds.train, ds.val, params, torch.device("cpu"), seed, recipe=RECIPE, engine=settings,
                      desc=f"baseline {settings.model_dump()}")  # fmt: skip
    seconds = [h["epoch_seconds"] for h in out["history"]]
    return {
        "settings": settings.model_dump(),
        "epochs": epochs,
        "seconds": round(time.perf_counter() - t0, 1),
        "epoch_seconds": [round(s, 1) for s in seconds],
        "best_epoch": out["best_epoch"],
        "best_val_accuracy": out["best_val_accuracy"],
        "test_accuracy_of_best_epoch": accuracy(model, ds.test, torch.device("cpu")),
    }, model


def maps_with(model, x, y, settings: InferenceParams, max_evals: int) -> tuple[np.ndarray, float]:
    spec = Spec("shap_partition", ShapPartitionSettings(max_evals=max_evals, pool_size=32), 500, settings)
    attribute(model, x[:2], y[:2], spec, seed=0)  # the compile (cached), outside the timing
    t0 = time.perf_counter()
    maps = attribute(model, x, y, spec, seed=0)
    return maps, len(x) * max_evals / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/cifar10/train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-evals", type=int, default=2000)
    ap.add_argument("--images", type=int, default=2000, help="training images the compiled engine explains")
    ap.add_argument("--compare-images", type=int, default=500, help="of those, explained by the eager engine")
    ap.add_argument(
        "--bf16-images", type=int, default=100, help="of those, explained in bfloat16 (slow without AVX512-BF16)"
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ds = data.prepare(DataParams(source="imagefolder", path=args.data), args.seed)
    training, model = {}, None
    for name, settings in [("eager_fp32", TrainingParams()), ("compiled_fp32", TrainingParams(compile=True))]:
        training[name], trained = train_one(ds, settings, args.epochs, args.seed)
        model = model or trained  # the eager-trained A is the one explained
        print(name, training[name], flush=True)
    training["bfloat16_one_epoch"], _ = train_one(ds, TrainingParams(dtype="bfloat16"), 1, args.seed)
    print("bfloat16", training["bfloat16_one_epoch"], flush=True)

    assert model is not None
    model.eval()
    x, y = to_float(ds.train.x[: args.images]), ds.train.y[: args.images]
    n = args.compare_images
    compiled, compiled_rate = maps_with(model, x, y, InferenceParams(compile=True), args.max_evals)
    exact, exact_rate = maps_with(model, x[:n], y[:n], InferenceParams(), args.max_evals)
    nb = args.bf16_images
    bf16, bf16_rate = maps_with(model, x[:nb], y[:nb], InferenceParams(compile=True, dtype="bfloat16"), args.max_evals)
    n_train = len(ds.train.y)
    attribution = {
        "max_evals": args.max_evals,
        "training_images": n_train,
        "compiled_fp32": {
            "images": len(x),
            "evals_per_s": round(compiled_rate),
            "minutes_for_all_training_images_extrapolated": round(n_train * args.max_evals / compiled_rate / 60, 1),
            "vs_eager_fp32_on_first_images": closeness(exact, compiled[:n]),
        },  # fmt: skip
        "eager_fp32": {
            "images": n,
            "evals_per_s": round(exact_rate),
            "minutes_for_all_training_images_extrapolated": round(n_train * args.max_evals / exact_rate / 60, 1),
        },  # fmt: skip
        "compiled_bf16": {
            "images": nb,
            "evals_per_s": round(bf16_rate),
            "minutes_for_all_training_images_extrapolated": round(n_train * args.max_evals / bf16_rate / 60, 1),
            "vs_eager_fp32": closeness(exact[:nb], bf16),
        },  # fmt: skip
    }
    print(attribution, flush=True)
    save_json(Path(args.out), {
        "provenance": {"recipe": "studies/recipes/engine_cifar10_seed0.yaml",
                       "command": "python studies/engine_cifar10.py " + " ".join(sys.argv[1:]),
                       "commit": head_commit(), "commit_is": "the code that ran", "machine": machine()},
        "seed": args.seed, "train_images": n_train, "training": training, "attribution": attribution,
    })  # fmt: skip


if __name__ == "__main__":
    main()
