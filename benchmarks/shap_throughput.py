"""SHAP precompute speed: raw forward vs shap.PartitionExplainer vs impactx.shap_maps.partition_shap.

LeNet-5 (random weights, seeded) on 32×32×3 images, one process, one machine, all three measured in this
run. Evaluations are counted as images × max_evals (both explainers spend exactly max_evals, +1 at most).
Prints one JSON line. Example:

    python benchmarks/shap_throughput.py --images 64 --max-evals 2000 --masker "blur(8,8)"
"""

import argparse
import json
import time

import numpy as np
import torch

from impactx.backbones import build_backbone
from impactx.model import Classifier
from impactx.shap_maps import partition_shap, shap_true_class


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--max-evals", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--masker", default="blur(8,8)")
    ap.add_argument("--pool", type=int, default=16)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = Classifier(build_backbone("lenet5", 3, 10, 32), [0.5] * 3, [0.25] * 3).eval()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (args.images, 3, 32, 32), dtype=np.uint8)).float() / 255
    y = rng.integers(0, 10, args.images)
    cpu = torch.device("cpu")
    kw = dict(max_evals=args.max_evals, batch_size=args.batch_size, masker=args.masker)

    forward_ips, forward_bs = forward_throughput(model, x)

    shap_true_class(model, x[:2], y[:2], device=cpu, **kw)  # warm-up (numba, caches)
    t0 = time.perf_counter()
    reference = shap_true_class(model, x, y, device=cpu, **kw)
    shap_eps = args.images * args.max_evals / (time.perf_counter() - t0)

    partition_shap(model, x[:2], y[:2], device=cpu, pool=args.pool, **kw)  # warm-up
    t0 = time.perf_counter()
    ours = partition_shap(model, x, y, device=cpu, pool=args.pool, **kw)
    ours_eps = args.images * args.max_evals / (time.perf_counter() - t0)

    diff = float(np.abs(ours - reference).max())
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
                "shap_evals_per_s": round(shap_eps),
                "partition_shap_evals_per_s": round(ours_eps),
                "ratio_vs_forward": round(ours_eps / forward_ips, 3),
                "speedup_vs_shap": round(ours_eps / shap_eps, 2),
                "max_abs_diff_vs_shap": diff,
                "max_abs_diff_vs_shap_relative": diff / float(np.abs(reference).max()),
            }
        )
    )


if __name__ == "__main__":
    main()
