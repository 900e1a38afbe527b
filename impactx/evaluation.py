"""The evaluate stage's computation for one (method, seed), on the same seeded test subset and the same
removal noise for every method and seed:

- test and validation accuracy;
- same-model faithfulness: MoRF and LeRF (AOPC, and the symmetric relevance gain SRG) of three maps on
  this model: its own map (model.explain; the baseline's is SHAP), post-hoc SHAP of this same model for
  its predicted class, and random maps. The paper's claim that IMPACTX's map is more faithful than SHAP
  is about one model: own against SHAP here, not across rows of the table;
- fidelity: agreement of its own map with the teacher (SHAP of A for the true class), with floors;
- latency: explain() against post-hoc SHAP of the same model, on 1 and 256 images (a ratio)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from impactx import inference, morf
from impactx.attribution import Progress, Spec, attribute
from impactx.config import Params
from impactx.data import Dataset, to_float
from impactx.fidelity import agreement, fidelity
from impactx.methods import Method
from impactx.train import accuracy, predict_logits

T = TypeVar("T")

MAPS = ("own", "shap", "random")  # the maps judged on each model
LATENCY_IMAGES = (1, 256)  # batch sizes at which explain() is timed against post-hoc SHAP


def morf_subset(ds: Dataset, params: Params) -> tuple[np.ndarray, torch.Tensor]:
    """Indices into the test split and their float images: the same for every method and seed."""
    n = min(params.evaluate.morf_images, len(ds.test.y))
    idx = np.sort(np.random.default_rng(params.seed).permutation(len(ds.test.y))[:n])
    return idx, to_float(ds.test.x[idx])


@torch.no_grad()
def explain_batched(model, x: torch.Tensor, device: torch.device, target=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and maps of a model with explain(): one forward pass per batch, no explainer. `target`
    (one class per image) asks a head with a map per class for those classes' maps."""
    model.to(device).eval()
    bs = inference.batch_size(device)
    batches = ((x[i : i + bs].to(device), None if target is None else target[i : i + bs]) for i in range(0, len(x), bs))
    parts = [model.explain(xb) if t is None else model.explain(xb, t) for xb, t in batches]
    return torch.cat([lg.argmax(1).cpu() for lg, _ in parts]), torch.cat([m.float().cpu() for _, m in parts])


def post_hoc_shap(
    model, x: torch.Tensor, pred: np.ndarray, seed: int, params: Params, device, first_index: int = 0, progress=None
) -> torch.Tensor:
    """SHAP of the model for its predicted class: Partition SHAP with attribution.shap_partition's masker
    and pool, evaluate.shap_max_evals evaluations per image."""
    spec = post_hoc_spec(params)
    maps = attribute(model, x, pred, spec, seed=seed, first_index=first_index, device=device, progress=progress)
    return torch.from_numpy(maps)


def post_hoc_spec(params: Params) -> Spec:
    """What post_hoc_shap runs: the same SHAP for every model, whatever R made the training maps."""
    shap = params.attribution.shap_partition  # type: ignore[attr-defined]
    options = shap.model_copy(update={"max_evals": params.evaluate.shap_max_evals})
    return Spec("shap_partition", options, params.attribution.batch_size, params.inference)


def _seconds(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """Wall seconds of fn() (CUDA work included) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def timed_post_hoc_shap(model, x, pred, seed: int, params: Params, device) -> tuple[torch.Tensor, dict[int, float]]:
    """post_hoc_shap of all of x, run as one call per LATENCY_IMAGES batch (1 image, the next 256) and one
    for the rest: the same maps as one call (each image keeps its index), and the seconds each of the
    timed batches took: what post-hoc SHAP costs a user for 1 and for 256 images."""
    device = torch.device(device)
    cuts = [0, *np.minimum(np.cumsum(LATENCY_IMAGES), len(x)).tolist(), len(x)]
    parts: list[torch.Tensor] = []
    seconds: dict[int, float] = {}
    spec = post_hoc_spec(params)
    net = inference.prepare(model, spec.inference, device)  # once: a compile is paid before the timing
    with torch.no_grad():
        net(x[:1].to(device))
    bar = Progress(len(x), spec, desc="post-hoc SHAP")
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        if b > a:
            run = partial(
                attribute, net, x[a:b], pred[a:b], spec, seed=seed, first_index=a, device=device, progress=bar
            )
            t, maps = _seconds(run, device)
            parts.append(torch.from_numpy(maps))
            if i < len(LATENCY_IMAGES):
                seconds[b - a] = t
    bar.close()
    return torch.cat(parts), seconds


@torch.no_grad()
def explain_latency(model, x: torch.Tensor, shap_seconds: dict[int, float], device, repeats: int = 5) -> list[dict]:
    """For each batch size n of shap_seconds: the best of `repeats` timings of model.explain on n images
    (after a warm-up), post-hoc SHAP's seconds for them, and the ratio (the one-pass map's speed-up)."""
    device = torch.device(device)
    model.to(device).eval()
    out = []
    for n, shap_s in shap_seconds.items():
        batch = x[:n].to(device)
        model.explain(batch)  # warm-up
        explain_s = min(_seconds(partial(model.explain, batch), device)[0] for _ in range(repeats))
        out.append({"images": n, "explain_s": explain_s, "shap_s": shap_s, "speedup": shap_s / max(explain_s, 1e-9)})
    return out


def faithfulness(model, x: torch.Tensor, maps: dict[str, torch.Tensor], params: Params, device) -> dict:
    """{map: {aopc, aopc_lerf, srg, morf_curve, lerf_curve}} for each map on this one model."""
    p = params.evaluate
    kw = {"patch_size": p.patch_size, "steps": p.steps, "device": device, "seed": params.seed, "removal": p.removal}
    net = inference.prepare(model, params.inference, torch.device(device), batch=morf.rows_per_pass(p.steps))
    out = {}
    for name, m in tqdm(maps.items(), desc="MoRF and LeRF", unit="map", mininterval=2):
        mo, le = (morf.removal_curves(net, x, m, order=o, **kw) for o in ("morf", "lerf"))
        out[name] = {"aopc": morf.aopc(mo), "aopc_lerf": morf.aopc(le), "srg": morf.srg(mo, le),
                     "morf_curve": mo.mean(0).tolist(), "lerf_curve": le.mean(0).tolist()}  # fmt: skip
    return out


def evaluate_run(
    model, method: Method, seed: int, ds: Dataset, params: Params, device, teacher=None, class_maps=None
) -> tuple[dict, dict[str, np.ndarray]]:
    """The result record of one (method, seed) and, for the figures, the first figure_images MoRF images'
    own maps, post-hoc SHAP maps of the same model and predicted classes.
    With `teacher` (SHAP of A for the true class of the MoRF images) and `class_maps` (K×C×H×W class
    means of the training maps), the record also has the map's agreement with the teacher and the floors':
    the class mean of the true class (an oracle: it knows the label) and of the predicted class (what the
    model alone could give), and a random map."""
    p = params.evaluate
    idx, x = morf_subset(ds, params)
    pred = predict_logits(model, x, device).argmax(1).numpy()
    shap_maps, shap_seconds = timed_post_hoc_shap(model, x, pred, seed, params, device)
    own = shap_maps if method.post_hoc else explain_batched(model, x, device)[1]
    random_maps = torch.rand(x.shape, generator=torch.Generator().manual_seed(params.seed))
    faith = faithfulness(model, x, {"own": own, "shap": shap_maps, "random": random_maps}, params, device)
    record = {
        "method": method.name,
        "seed": seed,
        "map": method.map_kind,
        "test_accuracy": accuracy(model, ds.test, device),
        "val_accuracy": accuracy(model, ds.val, device),
        "aopc": faith["own"]["aopc"],
        "aopc_random": faith["random"]["aopc"],
        "removal": p.removal,
        "faithfulness": faith,
        "morf_images": len(x),
        "morf_fractions": np.linspace(0, 1, p.steps + 1).round(4).tolist(),
        "morf_curve": faith["own"]["morf_curve"],
        "random_curve": faith["random"]["morf_curve"],
    }
    if not method.post_hoc:  # the one-pass map against post-hoc SHAP of the same model
        record["latency"] = explain_latency(model, x, shap_seconds, device)
    if teacher is not None:
        cm = np.asarray(class_maps)
        floors = {"class_mean": cm[ds.test.y[idx]], "class_mean_pred": cm[pred], "random": random_maps.numpy()}
        record["fidelity"] = fidelity(own.numpy(), teacher, floors)
        if getattr(model, "per_class", False):  # given the true class, as SHAP and the oracle floor are
            given = explain_batched(model, x, device, np.asarray(ds.test.y[idx]))[1]
            record["fidelity"]["map_given_class"] = agreement(given.numpy(), teacher)
    n = p.figure_images  # the figure's images: the method's own map, post-hoc SHAP of the model, its class
    return record, {"maps": own[:n].numpy().astype(np.float16), "shap": shap_maps[:n].numpy().astype(np.float16),
                    "pred": pred[:n]}  # fmt: skip
