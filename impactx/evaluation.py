"""The evaluate stage's computation for one (method, seed): test and validation accuracy, and MoRF/AOPC
of the method's own explanation map against random maps, on the same seeded test subset and the same
noise for every method and seed. The baseline's map is SHAP of A for its predicted class, post hoc."""

from __future__ import annotations

import numpy as np
import torch

from impactx import morf
from impactx.fidelity import fidelity
from impactx.config import Params
from impactx.data import Dataset, to_float
from impactx.methods import Method
from impactx.shap_maps import partition_shap
from impactx.train import accuracy, inference_batch_size, predict_logits


def morf_subset(ds: Dataset, params: Params) -> tuple[np.ndarray, torch.Tensor]:
    """Indices into the test split and their float images: the same for every method and seed."""
    n = min(params.evaluate.morf_images, len(ds.test.y))
    idx = np.sort(np.random.default_rng(params.seed).permutation(len(ds.test.y))[:n])
    return idx, to_float(ds.test.x[idx])


@torch.no_grad()
def explain_batched(model, x: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and maps of a model with explain(): one forward pass per batch, no explainer."""
    model.to(device).eval()
    bs = inference_batch_size(device)
    parts = [model.explain(x[i : i + bs].to(device)) for i in range(0, len(x), bs)]
    return torch.cat([lg.argmax(1).cpu() for lg, _ in parts]), torch.cat([m.float().cpu() for _, m in parts])


def explanation_maps(model, method: Method, x: torch.Tensor, seed: int, params: Params, device) -> torch.Tensor:
    """The method's own map (model.explain), or SHAP of the model for its predicted class (post_hoc)."""
    if not method.post_hoc:
        return explain_batched(model, x, device)[1]
    pred = predict_logits(model, x, device).argmax(1).numpy()
    maps = partition_shap(
        model, x, pred, max_evals=params.evaluate.shap_max_evals, batch_size=params.shap.batch_size,
        masker=params.shap.masker, seed=seed, pool=params.shap.pool_size, device=device,
    )  # fmt: skip
    return torch.from_numpy(maps)


def evaluate_run(
    model, method: Method, seed: int, ds: Dataset, params: Params, device, teacher=None, class_maps=None
) -> tuple[dict, np.ndarray]:
    """The result record of one (method, seed) and the maps of the first figure_images MoRF images.
    With `teacher` (SHAP of A for the true class of the MoRF images) and `class_maps` (K×C×H×W class
    means of the training maps), the record also has the map's agreement with the teacher and the floors'."""
    p = params.evaluate
    idx, x = morf_subset(ds, params)
    maps = explanation_maps(model, method, x, seed, params, device)
    random_maps = torch.rand(x.shape, generator=torch.Generator().manual_seed(params.seed))
    kw = dict(patch_size=p.patch_size, steps=p.steps, device=device, seed=params.seed)
    curve, random_curve = morf.morf_curves(model, x, maps, **kw), morf.morf_curves(model, x, random_maps, **kw)
    record = {
        "method": method.name,
        "seed": seed,
        "map": method.map_kind,
        "test_accuracy": accuracy(model, ds.test, device),
        "val_accuracy": accuracy(model, ds.val, device),
        "aopc": morf.aopc(curve),
        "aopc_random": morf.aopc(random_curve),
        "morf_images": len(x),
        "morf_fractions": np.linspace(0, 1, p.steps + 1).round(4).tolist(),
        "morf_curve": curve.mean(0).tolist(),
        "random_curve": random_curve.mean(0).tolist(),
    }
    if teacher is not None:
        floor = np.asarray(class_maps)[ds.test.y[idx]]
        record["fidelity"] = fidelity(maps.numpy(), teacher, floor, random_maps.numpy())
    return record, maps[: p.figure_images].numpy().astype(np.float16)
