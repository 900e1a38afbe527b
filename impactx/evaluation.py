"""The evaluate stage's computation: test accuracy of A and IMPACTX, and MoRF/AOPC of three maps for
the IMPACTX model on a seeded test subset: its own maps D(LEP(x)), SHAP maps of the same model for its
predicted class, and random maps as a floor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from impactx import morf
from impactx.config import Params
from impactx.data import Dataset, to_float
from impactx.shap_maps import partition_shap
from impactx.train import accuracy, inference_batch_size


@dataclass
class Evaluation:
    accuracy: dict[str, float]  # method → test accuracy
    aopc: dict[str, float]  # map kind → AOPC
    fractions: np.ndarray  # steps+1 fractions of patches replaced
    curves: dict[str, np.ndarray]  # map kind → N×(steps+1)
    images: torch.Tensor  # the MoRF subset, float in [0, 1]
    labels: np.ndarray
    predictions: np.ndarray
    maps: dict[str, torch.Tensor]

    def metrics(self) -> dict:
        return {
            "baseline": {"test_accuracy": self.accuracy["baseline"]},
            "impactx": {
                "test_accuracy": self.accuracy["impactx"],
                **{f"aopc_{k}_map": v for k, v in self.aopc.items()},
            },
            "morf_images": len(self.labels),
        }

    def plot_rows(self) -> list[dict]:
        """Mean MoRF curve per map kind, one row per step (the DVC plots format)."""
        return [
            {"fraction": round(float(f), 4), **{k: float(c[:, i].mean()) for k, c in self.curves.items()}}
            for i, f in enumerate(self.fractions)
        ]


@torch.no_grad()
def explain_batched(model, x: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """IMPACTX predictions and maps in one forward pass per batch."""
    model.to(device).eval()
    bs = inference_batch_size(device)
    parts = [model.explain(x[i : i + bs].to(device)) for i in range(0, len(x), bs)]
    return torch.cat([lg.argmax(1).cpu() for lg, _ in parts]), torch.cat([m.float().cpu() for _, m in parts])


def evaluate(baseline, model, ds: Dataset, params: Params, device: torch.device) -> Evaluation:
    p = params.evaluate
    acc = {"baseline": accuracy(baseline, ds.test, device), "impactx": accuracy(model, ds.test, device)}
    idx = np.sort(np.random.default_rng(params.seed).permutation(len(ds.test.y))[: p.morf_images])
    x = to_float(ds.test.x[idx])
    pred, impactx_maps = explain_batched(model, x, device)
    shap = partition_shap(
        model, x, pred.numpy(), max_evals=p.shap_max_evals, batch_size=params.shap.batch_size,
        masker=params.shap.masker, seed=params.seed, pool=params.shap.pool_size, device=device,
    )  # fmt: skip
    maps = {
        "impactx": impactx_maps,
        "shap": torch.from_numpy(shap),
        "random": torch.rand(x.shape, generator=torch.Generator().manual_seed(params.seed)),
    }
    curves = {
        k: morf.morf_curves(model, x, m, patch_size=p.patch_size, steps=p.steps, device=device, seed=params.seed)
        for k, m in maps.items()
    }
    return Evaluation(
        accuracy=acc,
        aopc={k: morf.aopc(c) for k, c in curves.items()},
        fractions=np.linspace(0, 1, p.steps + 1),
        curves=curves,
        images=x,
        labels=ds.test.y[idx],
        predictions=pred.numpy(),
        maps=maps,
    )
