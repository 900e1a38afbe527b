"""SHAP precompute speed: raw forward vs shap.PartitionExplainer vs impactx's shap_partition (impactx.owen).

LeNet-5 (random weights, seeded) on 32×32×3 images, one process, one machine, all measured in this run:
the forward pass eager and compiled (torch.compile, float32), and the engine with each (params.yaml
`inference.compile` false, the default, and true). `ratio_vs_best_forward` is the engine's rate as a stage
runs it by default (eager float32) over the best float32 forward, eager or compiled;
`compiled_ratio_vs_best_forward` the same for the engine on the compiled model. Evaluations are counted
as images × max_evals (both explainers spend exactly max_evals, +1 at most).
With --workers N it also measures the attribution stage's multi-process path (compute_maps with N single-thread
processes, process start-up included) against the forward of N single-thread processes.
Prints one JSON line. Example:

    python benchmarks/shap_throughput.py --images 64 --max-evals 2000 --masker "blur(8,8)" --workers 2
"""

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from impactx.attribution import Spec, attribute
from impactx.attribution.shap_partition import ShapPartitionSettings, shap_true_class
from impactx.backbones import build_backbone
from impactx.config import InferenceParams
from impactx.inference import prepare
from impactx.model import Classifier
from impactx.shards import compute_maps, local_runner


def forward_throughput(model, x, batch_sizes=(256, 512, 1024, 2048, 4096), seconds=2.0):
    """Best images/s of softmax(model(x)) over batch sizes: the limit an explainer can approach."""
    best = (0.0, 0)
    with torch.no_grad():
        for bs in batch_sizes:
            batch = x[torch.arange(bs) % len(x)]
            torch.softmax(model(batch), 1)  # warm-up
            done, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                torch.softmax(model(batch), 1)
                done += bs
            best = max(best, (done / (time.perf_counter() - t0), bs))
    return best


def lenet5():
    torch.manual_seed(0)
    return Classifier(build_backbone("lenet5", 3, 10, 32), [0.5] * 3, [0.25] * 3).eval()


def _one_thread_forward(_):
    torch.set_num_threads(1)
    return forward_throughput(lenet5(), torch.rand(512, 3, 32, 32), batch_sizes=(256, 512))[0]


def forward_throughput_processes(n: int) -> float:
    """Summed images/s of n single-thread processes running the forward at the same time."""
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        return sum(pool.map(_one_thread_forward, range(n)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--max-evals", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--masker", default="blur(8,8)")
    ap.add_argument("--pool", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="also measure the N-process stage path")
    ap.add_argument("--worker-images", type=int, default=256, help="images for the N-process measurement")
    args = ap.parse_args()

    model = lenet5()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (args.images, 3, 32, 32), dtype=np.uint8)).float() / 255
    y = rng.integers(0, 10, args.images)
    cpu = torch.device("cpu")
    kw = dict(max_evals=args.max_evals, batch_size=args.batch_size, masker=args.masker)
    spec = Spec("shap_partition", ShapPartitionSettings(max_evals=args.max_evals, masker=args.masker, pool_size=args.pool),
                args.batch_size)  # fmt: skip

    forward_ips, forward_bs = forward_throughput(model, x)

    shap_true_class(model, x[:2], y[:2], device=cpu, **kw)  # warm-up (numba, caches)
    t0 = time.perf_counter()
    reference = shap_true_class(model, x, y, device=cpu, **kw)
    shap_eps = args.images * args.max_evals / (time.perf_counter() - t0)

    attribute(model, x[:2], y[:2], spec, device=cpu)  # warm-up
    t0 = time.perf_counter()
    ours = attribute(model, x, y, spec, device=cpu)
    ours_eps = args.images * args.max_evals / (time.perf_counter() - t0)

    # the engine on the compiled model (inference.compile: true), its one batch shape compiled first
    compiled_spec = Spec(spec.method, spec.options, spec.batch_size, InferenceParams(compile=True))
    attribute(model, x[:2], y[:2], compiled_spec, device=cpu)  # warm-up: the compile
    t0 = time.perf_counter()
    compiled_ours = attribute(model, x, y, compiled_spec, device=cpu)
    compiled_eps = args.images * args.max_evals / (time.perf_counter() - t0)

    # the limit is the best forward seen, measured before and after the explainers (clock and load drift)
    forward_ips, forward_bs = max((forward_ips, forward_bs), forward_throughput(model, x))
    # the float32 ceiling: torch.compile of the same model at each batch size (one static graph each)
    compiled_ips, compiled_bs = max(
        forward_throughput(prepare(lenet5(), InferenceParams(compile=True), cpu, batch=bs), x, batch_sizes=(bs,))
        for bs in (256, 512, 1024, 2048)
    )
    best_fp32_ips = max(forward_ips, compiled_ips)
    diff = float(np.abs(ours - reference).max())
    extra = {}
    if args.workers > 1:
        n = args.worker_images
        x8 = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y8 = rng.integers(0, 10, n)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            compute_maps(model, x8, y8, spec, shard_size=max(1, n // (2 * args.workers)), seed=0, device=cpu,
                         work_root=Path(tmp), runner=local_runner(args.workers))  # fmt: skip
            multi_eps = n * args.max_evals / (time.perf_counter() - t0)
        multi_forward = forward_throughput_processes(args.workers)
        extra = {
            "workers": args.workers,
            "worker_images": n,
            "forward_images_per_s_in_workers": round(multi_forward),
            "partition_shap_workers_evals_per_s": round(multi_eps),
            "ratio_vs_forward_workers_vs_1_process": round(multi_eps / forward_ips, 3),
            "ratio_vs_forward_workers_vs_same_processes": round(multi_eps / multi_forward, 3),
            "speedup_vs_shap_workers": round(multi_eps / shap_eps, 2),
        }
    print(
        json.dumps(
            {
                "masker": args.masker,
                "images": args.images,
                "max_evals": args.max_evals,
                "batch_size": args.batch_size,
                "pool": args.pool,
                "torch_threads": torch.get_num_threads(),
                "forward_images_per_s": round(forward_ips),
                "forward_best_batch": forward_bs,
                "compiled_forward_images_per_s": round(compiled_ips),
                "compiled_forward_best_batch": compiled_bs,
                "shap_evals_per_s": round(shap_eps),
                "partition_shap_evals_per_s": round(ours_eps),
                "ratio_vs_forward": round(ours_eps / forward_ips, 3),
                "ratio_vs_best_forward": round(ours_eps / best_fp32_ips, 3),  # eager or compiled float32
                "partition_shap_compiled_evals_per_s": round(compiled_eps),
                "compiled_ratio_vs_best_forward": round(compiled_eps / best_fp32_ips, 3),
                "compiled_speedup_vs_shap": round(compiled_eps / shap_eps, 2),
                "compiled_max_abs_diff_vs_eager_relative": float(np.abs(compiled_ours - ours).max())
                / float(np.abs(ours).max()),
                "speedup_vs_shap": round(ours_eps / shap_eps, 2),
                "max_abs_diff_vs_shap": diff,
                "max_abs_diff_vs_shap_relative": diff / float(np.abs(reference).max()),
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main()
