"""R, the attribution method that makes the training maps r = R(A, x, y) (params.yaml `attribution`):

    shap_partition        Partition SHAP with shap's Image masker (impactx.shap_maps.partition_shap): the paper's
    integrated_gradients  captum IntegratedGradients from a black image, `steps` points on the path
    gradient_shap         captum GradientShap: `samples` points between the image and seeded uniform-noise baselines
    deeplift              captum DeepLift against a black image (models built of nn.Module layers only)

One call shape for all: attribute(model, images, targets, method=..., ...) → float32 N×C×H×W. Every
method explains the softmax probability of the target class, as the SHAP maps do, and is a pure function
of its inputs and (seed, image index), so a shard's maps do not depend on where it starts. The gradient
methods cost `steps` (or `samples`) forward and backward passes per image, against SHAP's max_evals
forward passes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from impactx import ImpactXError

Method = Literal["shap_partition", "integrated_gradients", "gradient_shap", "deeplift"]
METHODS: tuple[str, ...] = Method.__args__
NOISE_BASELINES = 8  # gradient_shap: uniform-noise images drawn per image, seeded by (seed, index)


EXPLAINERS = {  # what produced the maps, for maps.json
    "shap_partition": "impactx.shap_maps.partition_shap (values of shap.PartitionExplainer)",
    "integrated_gradients": "captum.attr.IntegratedGradients from a black image (Gauss-Legendre points)",
    "gradient_shap": f"captum.attr.GradientShap, {NOISE_BASELINES} seeded uniform-noise baselines per image",
    "deeplift": "captum.attr.DeepLift against a black image",
}


NAMES = {"shap_partition": "SHAP", "integrated_gradients": "Integrated Gradients", "gradient_shap": "GradientSHAP",
         "deeplift": "DeepLIFT"}  # fmt: skip


def teacher_label(params) -> str:
    """The training and teacher maps in words, for the tables: "SHAP of A", "Integrated Gradients of A",
    "SHAP of models:/cifar10-mobilenet_v2-baseline/1"."""
    a = params.attribution
    return f"{NAMES[a.method]} of {a.teacher or 'A'}"


USES = {  # the settings each method reads
    "shap_partition": ("max_evals", "batch_size", "masker", "pool"),
    "integrated_gradients": ("steps", "batch_size"),
    "gradient_shap": ("samples", "batch_size"),
    "deeplift": ("batch_size",),
}


def used(settings: dict) -> dict:
    """The settings the chosen method reads (for maps.json)."""
    return {k: settings[k] for k in USES[settings["method"]]}


def settings(params) -> dict:
    """attribute()'s settings from params.yaml: `attribution` (the method) and `shap` (Partition SHAP's)."""
    a, s = params.attribution, params.shap
    return dict(method=a.method, steps=a.steps, samples=a.samples, max_evals=s.max_evals, batch_size=s.batch_size,
                masker=s.masker, pool=s.pool_size)  # fmt: skip


def map_seed(params, seed: int) -> int:
    """The seed of R's random draws (SHAP's ties, GradientSHAP's baselines) for replicate `seed`: its own
    for maps of its A; the data seed for a teacher, whose maps are then the same for every replicate
    (one teacher, one set of maps: the attribution stage computes them once and the other seeds reuse them)."""
    return seed if params.attribution.teacher is None else params.seed


def explained_model(params, info, seed: int):
    """The model R explains, and what it is: A of `seed` (stage 1), or attribution.teacher, an MLflow
    model this pipeline logged (models:/<name>/<version>, runs:/..., or a model folder). The teacher is
    rebuilt from its weights-only checkpoint by this package: none of its code runs."""
    from impactx import layout, methods

    spec = params.attribution.teacher
    if spec is None:
        return methods.load(layout.model("baseline", seed), info, params.model)[1], f"A (seed {seed})"
    import mlflow
    from mlflow.exceptions import MlflowException

    from impactx import serving, tracking

    mlflow.set_tracking_uri(tracking.tracking_uri(params.mlflow.tracking_uri))
    try:
        local = Path(mlflow.artifacts.download_artifacts(spec))
        flavor = mlflow.models.Model.load(str(local / "MLmodel")).flavors["python_function"]
        files = {k: local / flavor["artifacts"][k]["path"] for k in (serving.CHECKPOINT, serving.INFO)}
    except (MlflowException, OSError, KeyError) as e:
        raise ImpactXError(f"attribution.teacher '{spec}' is not a model this pipeline logged ({type(e).__name__}:"
                           f" {str(e).splitlines()[0] if str(e) else ''}): give models:/<name>/<version>") from None  # fmt: skip
    _, net, tinfo = serving.load_artifacts(files)
    if tuple(tinfo.image_shape) != tuple(info.image_shape) or tinfo.classes != info.classes:
        raise ImpactXError(
            f"attribution.teacher '{spec}' takes {tinfo.image_shape} images of classes {tinfo.classes[:4]}...: this data"
            f" has {info.image_shape} and {info.classes[:4]}...: train the teacher on the same data"
        )
    return net, f"teacher {spec}"


class Probability(nn.Module):
    """softmax(model(x)): what every attribution method explains (a module, as DeepLift needs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x).float(), dim=1)


def attribute(
    model,
    images: torch.Tensor,
    targets,
    *,
    method: str = "shap_partition",
    max_evals: int = 500,
    batch_size: int = 500,
    masker: str = "blur(8,8)",
    steps: int = 32,
    samples: int = 16,
    seed: int = 0,
    first_index: int = 0,
    pool: int = 16,
    device: torch.device | None = None,
    progress=None,
) -> np.ndarray:
    """Maps of softmax(model(x))[target] for float images N×C×H×W in [0, 1]; returns float32 N×C×H×W.

    shap_partition reads max_evals, batch_size, masker, pool; the gradient methods read steps
    (integrated_gradients) or samples (gradient_shap) and spend at most batch_size images per pass."""
    if method not in METHODS:
        raise ImpactXError(f"attribution.method '{method}' is unknown: use one of {', '.join(METHODS)}")
    if method == "shap_partition":
        from impactx.shap_maps import partition_shap

        return partition_shap(
            model, images, targets, max_evals=max_evals, batch_size=batch_size, masker=masker, seed=seed,
            first_index=first_index, pool=pool, device=device, progress=progress,
        )  # fmt: skip
    device = device or next(model.parameters()).device
    net = Probability(model.to(device).eval()).eval()
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    per_image = steps if method == "integrated_gradients" else samples if method == "gradient_shap" else 1
    chunk = max(1, batch_size // per_image)  # images per pass: chunk × per_image ≤ batch_size rows
    out = np.empty(tuple(images.shape), np.float32)
    for lo in range(0, len(images), chunk):
        x, y = images[lo : lo + chunk].to(device), targets[lo : lo + chunk].to(device)
        out[lo : lo + len(x)] = _gradient_maps(net, x, y, method, steps, samples, seed, first_index + lo)
        if progress is not None:
            progress.update(len(x))
    return out


def _gradient_maps(net, x, y, method: str, steps: int, samples: int, seed: int, first: int) -> np.ndarray:
    from captum.attr import DeepLift, GradientShap, IntegratedGradients

    x, black = x.clone().requires_grad_(True), torch.zeros_like(x)
    with warnings.catch_warnings():  # captum's notes about the hooks it sets on activations
        warnings.filterwarnings("ignore", category=UserWarning, module="captum")
        if method == "integrated_gradients":
            a = IntegratedGradients(net).attribute(x, baselines=black, target=y, n_steps=steps, method="gausslegendre")
        elif method == "deeplift":
            a = DeepLift(net).attribute(x, baselines=black, target=y)
        else:  # gradient_shap: captum draws with np.random; each image gets its own seeded draws
            rows, state = [], np.random.get_state()
            try:
                for i in range(len(x)):
                    np.random.seed([seed, first + i])
                    base = torch.from_numpy(np.random.random_sample((NOISE_BASELINES, *x.shape[1:])).astype(np.float32))
                    rows.append(GradientShap(net).attribute(x[i : i + 1], baselines=base.to(x.device),
                                                            target=y[i : i + 1], n_samples=samples, stdevs=0.0))  # fmt: skip
            finally:
                np.random.set_state(state)
            a = torch.cat(rows)
    return a.detach().float().cpu().numpy()
