"""Partition SHAP (the paper's R) with shap's Image masker: shap.PartitionExplainer's values, computed for
many images per forward pass by impactx.owen.

What is explained: the softmax probability of the target class, so a map sums to
p_y(x) − p_y(background), where the background is the fully masked (e.g. blurred) image.
shap_true_class is shap itself, one image at a time: the reference for the tests and the benchmark."""

from __future__ import annotations

import re

import numpy as np
import torch
from pydantic import Field, field_validator

from impactx import ImpactXError
from impactx.attribution import Run, register
from impactx.config import Section
from impactx.owen import owen_values

MASKER_PATTERN = re.compile(r"^(inpaint_telea|inpaint_ns|blur\(\d+,\s*\d+\))$")


def check_masker(masker: str) -> str:
    if not MASKER_PATTERN.match(masker):
        raise ImpactXError(f"unknown SHAP masker '{masker}': use blur(k,k), inpaint_telea or inpaint_ns")
    return masker


class ShapPartitionSettings(Section):
    max_evals: int = Field(500, ge=10)  # model evaluations per image; the paper's is 2000
    masker: str = "blur(8,8)"  # blur(k,k) | inpaint_telea | inpaint_ns: what a masked region becomes
    pool_size: int = Field(16, gt=0)  # images explained together; masks take pool × max_evals × C·H·W bytes

    @field_validator("masker")
    @classmethod
    def _masker(cls, v: str) -> str:
        if not MASKER_PATTERN.match(v):
            raise ValueError(f"unknown SHAP masker '{v}': use blur(k,k), inpaint_telea or inpaint_ns")
        return v


@register("shap_partition", label="SHAP", settings=ShapPartitionSettings, cost="max_evals", forward_only=True,
          explainer="impactx.attribution.shap_partition (values of shap.PartitionExplainer)")  # fmt: skip
def shap_partition(model, images, targets, options: ShapPartitionSettings, run: Run) -> np.ndarray:
    """Image i breaks priority ties with np.random.RandomState([run.seed, run.first_index + i]); equal to
    shap.PartitionExplainer with shap.maskers.Image(masker) up to float rounding of the model outputs."""
    seeds = [[run.seed, run.first_index + i] for i in range(len(images))]
    return owen_values(model, images, targets, max_evals=options.max_evals, batch_size=run.batch_size,
                       masker=options.masker, seeds=seeds, pool=options.pool_size, device=run.device,
                       progress=run.progress)  # fmt: skip


def shap_true_class(
    model,
    images: torch.Tensor,
    targets,
    *,
    max_evals: int,
    batch_size: int,
    masker: str,
    device: torch.device,
    seed: int = 0,
    first_index: int = 0,
    progress=None,
) -> np.ndarray:
    """The reference: shap.PartitionExplainer, one image at a time, seeded like shap_partition.
    Returns N×C×H×W float32. Slow; kept for tests and benchmarks/shap_throughput.py."""
    import shap

    check_masker(masker)
    n, c, h, w = images.shape
    model = model.to(device).eval()
    target = {"y": 0}
    # OpenCV inpaints 8-bit images, so inpaint maskers see pixels in 0..255 and the model gets them back /255
    scale = 255.0 if masker.startswith("inpaint") else 1.0

    @torch.no_grad()
    def f(x_hwc: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(x_hwc, dtype=np.float32)).permute(0, 3, 1, 2).to(device)
        if scale != 1.0:
            x = x / scale
        p = torch.softmax(model(x).float(), dim=1)[:, target["y"]]
        return p.cpu().numpy()[:, None]

    image_masker = shap.maskers.Image(masker, shape=(h, w, c))
    explainer = shap.PartitionExplainer(f, image_masker)
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    if scale != 1.0:
        hwc = np.rint(hwc * scale).astype(np.float32)
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        target["y"] = int(targets[i])
        np.random.seed([seed, first_index + i])  # shap breaks exact priority ties with np.random.randn
        # shap's Image masker caches the blurred image under id(x); a new row array can reuse a freed
        # array's id and get the previous image's blur as its background. Forget the cache per image.
        image_masker.last_xid = None
        sv = explainer(hwc[i : i + 1], max_evals=max_evals, batch_size=batch_size, silent=True)
        out[i] = np.asarray(sv.values[0, ..., 0], np.float32).transpose(2, 0, 1)
        if progress is not None:
            progress.update(1)
    return out
