"""Test and validation accuracy of stage-1 checkpoints, per seed, with mean ± sample std and the 95%
t-interval of the mean: the baseline's accuracy for seeds whose other stages (SHAP, stage 2) did not run.

    python studies/checkpoint_accuracy.py --seeds 0 1 2 3 4 [--method baseline]

Run from the project root after `dvc repro baseline@<seed>` for each seed; reads data/prepared and
models/<method>/seed<seed>.pt, writes nothing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path.cwd()))  # the project's impactx, like the stages

from impactx import data, layout, methods  # noqa: E402
from impactx.params import load_params  # noqa: E402
from impactx.train import accuracy, resolve_device  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--method", default="baseline")
    args = ap.parse_args()
    from scipy import stats

    torch.set_flush_denormal(True)
    params = load_params()
    device = resolve_device(params.device)
    ds = data.load(layout.PREPARED)
    rows = []
    for seed in args.seeds:
        path = layout.model(args.method, seed)
        _, model = methods.load(path, ds.info, params.model)
        t = methods.training_of(path)
        rows.append(
            (
                seed,
                accuracy(model, ds.test, device),
                accuracy(model, ds.val, device),
                t.get("best_epoch"),
                t.get("epochs_run"),
            )
        )
    print("| seed | test accuracy | val accuracy | best epoch / run |\n| --- | --- | --- | --- |")
    for seed, test, val, best, ran in rows:
        print(f"| {seed} | {test:.4f} | {val:.4f} | {best} / {ran} |")
    for i, name in ((1, "test"), (2, "val")):
        v = np.array([r[i] for r in rows])
        if len(v) < 2:
            print(f"{name}: {v.mean():.4f} (1 seed: no std or interval)")
            continue
        sd = v.std(ddof=1)
        half = stats.t.ppf(0.975, len(v) - 1) * sd / np.sqrt(len(v))
        print(
            f"{name}: {v.mean():.4f} ± {sd:.4f} (sample std), 95% t-interval of the mean ± {half:.4f}, {len(v)} seeds"
        )


if __name__ == "__main__":
    main()
