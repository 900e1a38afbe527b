"""IMPACTX's selling point, measured: one explain() pass (class and map) against post-hoc SHAP of the
same model (Partition SHAP at max_evals evaluations per image), on 1 and 256 images, both measured in
this run, as a ratio. The evaluate stage logs the same ratio (explain_speedup_1, explain_speedup_256).

With --checkpoint (a pipeline checkpoint, e.g. models/impactx/seed0.pt, and data/prepared/info.json)
the trained model; otherwise IMPACTX on LeNet-5 with seeded random weights on 3×32×32 images (the
forward pass costs the same). --heads also times explain() of IMPACTX with each explanation head
(impactx.decoder / decoder_prior / decoder_output: latent, the paper's D(z); spatial; prior;
spatial_prior; prior_per_class and spatial_prior_per_class, a map per class, the predicted class's served)
against the same SHAP timings: the classifier's forward pass, what SHAP calls, is the same whatever the
head. max_evals, batch size, masker and pool default to params.yaml's attribution.shap_partition section
when run in a project.
Prints one JSON line. Example:

    python benchmarks/explain_latency.py --max-evals 2000 --heads latent spatial prior prior_per_class
"""

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from impactx import layout, methods
from impactx.data import DatasetInfo, load_info
from impactx.evaluation import LATENCY_IMAGES, explain_latency, timed_post_hoc_shap
from impactx.methods import Stage1
from impactx.params import load_params, parse_params
from impactx.study import machine, report_benchmark
from impactx.train import resolve_device

HEADS = {  # impactx settings of each explanation head (docs: configuration, impactx.decoder)
    "latent": {"decoder": "latent", "decoder_prior": "none"},
    "spatial": {"decoder": "spatial", "decoder_prior": "none"},
    "prior": {"decoder": "latent", "decoder_prior": "class"},
    "spatial_prior": {"decoder": "spatial", "decoder_prior": "class"},
    "prior_per_class": {"decoder": "latent", "decoder_prior": "class", "decoder_output": "per_class"},
    "spatial_prior_per_class": {"decoder": "spatial", "decoder_prior": "class", "decoder_output": "per_class"},
}


def random_impactx(info: DatasetInfo, params, head: dict | None = None):
    torch.manual_seed(0)
    if head:
        params = params.model_copy(update={"impactx": params.impactx.model_copy(update=head)})
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline.pt"
        methods.save(base, "baseline", params.baseline, methods.build("baseline", Stage1(info, params.model), params))
        return methods.build("impactx", Stage1(info, params.model, base), params).eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--max-evals",
        type=int,
        help="SHAP evaluations per image (default: params.yaml attribution.shap_partition.max_evals)",
    )
    ap.add_argument("--checkpoint", type=Path, help="a method's checkpoint (needs data/prepared/info.json)")
    ap.add_argument("--heads", nargs="+", choices=list(HEADS), default=[], help="also time these heads' explain()")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, help="also write the line as a results JSON (studies/results/...)")
    args = ap.parse_args()
    host = {**machine(), "load_average_1min_before": os.getloadavg()[0]}
    torch.set_flush_denormal(True)
    params = load_params() if Path("params.yaml").exists() else parse_params({})
    max_evals = args.max_evals or params.attribution.shap_partition.max_evals
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"shap_max_evals": max_evals})})
    device = resolve_device(args.device)
    if args.checkpoint:
        info = load_info(layout.PREPARED)
        _, model = methods.load(args.checkpoint, info, params.model)
    else:
        info = DatasetInfo("random", [str(i) for i in range(10)], (3, 32, 32), [0.5] * 3, [0.25] * 3, {})
        model = random_impactx(info, params)
    model = model.to(device).eval()
    n = 1 + sum(LATENCY_IMAGES)  # the timed batches, then one image left over
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, *info.image_shape), dtype=np.uint8)) / 255.0
    with torch.no_grad():
        pred = model(x.to(device)).argmax(1).cpu().numpy()
    timed_post_hoc_shap(model, x[:2], pred[:2], 0, params, device)  # warm-up (numba, caches)
    _, shap_seconds = timed_post_hoc_shap(model, x, pred, 0, params, device)
    rows = explain_latency(model, x, shap_seconds, device)
    heads = {h: explain_latency(random_impactx(info, params, HEADS[h]).to(device), x, shap_seconds, device)
             for h in args.heads}  # fmt: skip
    line = {
        "model": str(args.checkpoint or "impactx on lenet5, random weights"), "device": str(device),
        "image_shape": list(info.image_shape), "max_evals": max_evals, "masker": params.attribution.shap_partition.masker,
        "threads": torch.get_num_threads(),
        **{f"images_{r['images']}": {k: round(v, 6) for k, v in r.items() if k != "images"} for r in rows},
        **{f"head_{h}_images_{r['images']}": {k: round(v, 6) for k, v in r.items() if k != "images"}
           for h, hr in heads.items() for r in hr},
    }  # fmt: skip
    report_benchmark(line, host, args.out)


if __name__ == "__main__":
    main()
