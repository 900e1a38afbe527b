"""The inference and training settings (params.yaml `inference:` and `training:`) measured against eager
float32 in the same run: for each backbone and each setting, the forward pass's images/s, Partition
SHAP's evaluations/s through attribute() (as the attribution stage runs it), the training step's
images/s (the baseline's loss, its backward and Adam, as train.Step runs it), their ratios to eager
float32, and SHAP's rate as a fraction of the best float32 forward of this run. Random weights
(seeded), 3×32×32 images; the compile time (first call, inductor's cache in a temporary folder) is
reported apart.

    python benchmarks/inference.py                               # LeNet-5 and MobileNetV2
    python benchmarks/inference.py --backbones lenet5 --images 16 --max-evals 500
    python benchmarks/inference.py --out studies/results/benchmark_inference.json   # the docs' table

Prints one JSON line per backbone and setting, then one summary line; --out also writes them, with the
machine and the commit, as a results file that `python -m impactx.report` turns into a docs page."""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from impactx.attribution import Spec, attribute
from impactx.attribution.shap_partition import ShapPartitionSettings
from impactx.backbones import build_backbone
from impactx.config import InferenceParams, TrainingParams
from impactx.fidelity import per_map_pearson
from impactx.inference import prepare
from impactx.io import atomic_write
from impactx.model import Classifier
from impactx.study import head_commit, machine
from impactx.train import Step

SETTINGS = {
    "eager_fp32": InferenceParams(),
    "channels_last": InferenceParams(channels_last=True),
    "bf16": InferenceParams(dtype="bfloat16"),
    "bf16_channels_last": InferenceParams(dtype="bfloat16", channels_last=True),
    "compiled_fp32": InferenceParams(compile=True),
    "compiled_bf16": InferenceParams(compile=True, dtype="bfloat16"),
}
BATCH = {"lenet5": 1024, "cnn3": 512, "mobilenet_v2": 256, "efficientnet_b2": 128}


def model(name: str) -> Classifier:
    torch.manual_seed(0)
    return Classifier(build_backbone(name, 3, 10, 32), [0.5] * 3, [0.25] * 3).eval()


def images_per_s(net, x: torch.Tensor, seconds: float) -> tuple[float, float]:
    """(images/s of softmax(net(x)) after its first call, seconds of that first call: the compile)."""
    with torch.no_grad():
        t0 = time.perf_counter()
        torch.softmax(net(x), 1)
        first = time.perf_counter() - t0
        torch.softmax(net(x), 1)
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.softmax(net(x), 1)
            done += len(x)
    return done / (time.perf_counter() - t0), first


def train_images_per_s(name: str, settings: InferenceParams, batch: int, seconds: float) -> tuple[float, float]:
    """(images/s of the training step after its first call, seconds of that first call) for the baseline
    model of `name`: loss, backward and an Adam step on one batch, as train.Step runs them."""
    net = model(name).train()
    step = Step(net, TrainingParams(**settings.model_dump()), torch.device("cpu"))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))

    def one():
        opt.zero_grad(set_to_none=True)
        step(x, y, None)["loss"].backward()
        opt.step()

    t0 = time.perf_counter()
    one()
    first = time.perf_counter() - t0
    one()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        one()
        done += batch
    return done / (time.perf_counter() - t0), first


def closeness(exact: np.ndarray, maps: np.ndarray) -> dict:
    """Minimum per-map Pearson and the largest difference relative to the largest |value|, against the
    eager float32 maps; None where the exact maps are constant (random weights can give flat outputs)."""
    pearson = per_map_pearson(exact, maps)
    scale = float(np.abs(exact).max())
    return {
        "min_pearson_vs_eager_fp32": None if np.isnan(pearson).all() else float(np.nanmin(pearson)),
        "max_abs_diff_vs_eager_fp32_relative": float(np.abs(exact - maps).max()) / scale if scale > 0 else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["lenet5", "mobilenet_v2"])
    ap.add_argument("--images", type=int, default=16, help="images explained by Partition SHAP per setting")
    ap.add_argument("--max-evals", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=3.0, help="timing window of each forward measurement")
    ap.add_argument("--train-batch", type=int, default=64, help="images per training step (baseline.batch_size)")
    ap.add_argument("--out", type=Path, help="also write the lines as a results JSON (studies/results/...)")
    args = ap.parse_args()
    host = {**machine(), "load_average_1min_before": os.getloadavg()[0]}
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))  # a cold cache
    rng = np.random.default_rng(0)
    summary, lines = {}, []
    for name in args.backbones:
        x = torch.rand(BATCH.get(name, 256), 3, 32, 32, generator=torch.Generator().manual_seed(0))
        xs = torch.from_numpy(rng.random((args.images, 3, 32, 32), dtype=np.float32))
        ys = rng.integers(0, 10, args.images)
        rows, exact = {}, None
        for label, settings in SETTINGS.items():
            net = prepare(model(name), settings, torch.device("cpu"), batch=len(x))
            ips, first = images_per_s(net, x, args.seconds)
            train_ips, train_first = train_images_per_s(name, settings, args.train_batch, args.seconds)
            spec = Spec("shap_partition", ShapPartitionSettings(max_evals=args.max_evals), 500, settings)
            attribute(model(name), xs[:2], ys[:2], spec)  # warm-up: the engine's own shapes compile here
            t0 = time.perf_counter()
            maps = attribute(model(name), xs, ys, spec)
            eps = args.images * args.max_evals / (time.perf_counter() - t0)
            if exact is None:
                exact = maps
            rows[label] = {"forward_images_per_s": ips, "first_call_s": first, "shap_evals_per_s": eps,
                           "train_images_per_s": train_ips, "train_first_call_s": train_first,
                           **closeness(exact, maps)}  # fmt: skip
        best_fp32 = max(rows[k]["forward_images_per_s"] for k in ("eager_fp32", "channels_last", "compiled_fp32"))
        base = rows["eager_fp32"]
        for label, r in rows.items():
            line = {"backbone": name, "setting": label, "batch": len(x), "torch_threads": torch.get_num_threads(),
                    "forward_images_per_s": round(r["forward_images_per_s"]),
                    "forward_vs_eager_fp32": round(r["forward_images_per_s"] / base["forward_images_per_s"], 2),
                    "first_call_s": round(r["first_call_s"], 1), "shap_evals_per_s": round(r["shap_evals_per_s"]),
                    "shap_vs_eager_fp32": round(r["shap_evals_per_s"] / base["shap_evals_per_s"], 2),
                    "shap_vs_best_fp32_forward": round(r["shap_evals_per_s"] / best_fp32, 3),
                    "train_images_per_s": round(r["train_images_per_s"]),
                    "train_vs_eager_fp32": round(r["train_images_per_s"] / base["train_images_per_s"], 2),
                    "train_first_call_s": round(r["train_first_call_s"], 1),
                    "min_pearson_vs_eager_fp32": r["min_pearson_vs_eager_fp32"],
                    "max_abs_diff_vs_eager_fp32_relative": r["max_abs_diff_vs_eager_fp32_relative"]}  # fmt: skip
            print(json.dumps(line), flush=True)
            lines.append(line)
        summary[name] = {"best_fp32_forward_images_per_s": round(best_fp32),
                         "compiled_fp32_shap_vs_best_fp32_forward": round(rows["compiled_fp32"]["shap_evals_per_s"] / best_fp32, 3)}  # fmt: skip
    print(json.dumps({"summary": summary, "images": args.images, "max_evals": args.max_evals}))
    if args.out:
        prov = {"command": "python benchmarks/inference.py " + " ".join(sys.argv[1:]), "commit": head_commit(),
                "commit_is": "the code that ran", "machine": host}  # fmt: skip
        data = {"provenance": prov, "images": args.images, "max_evals": args.max_evals,
                "train_batch": args.train_batch, "rows": lines, "summary": summary}  # fmt: skip
        atomic_write(args.out, lambda t: t.write_text(json.dumps(data, indent=1) + "\n"))


if __name__ == "__main__":
    main()
