"""R, the attribution methods that make the maps r = R(A, x, y): a registry, one module per method.

    shap_partition        Partition SHAP with shap's Image masker, many images per forward pass (the paper's)
    integrated_gradients  captum IntegratedGradients from a black image
    gradient_shap         captum GradientShap against seeded uniform-noise baselines
    deeplift              captum DeepLift against a black image

An R is a function decorated with @register in impactx/attribution/<name>.py, with its params schema
(the section `attribution.<name>` of params.yaml) and the setting that counts its model evaluations
per image (its cost unit):

    @register("my_method", label="Mine", explainer="what maps.json says made them", settings=MySettings,
              cost="steps")
    def my_method(model, images, targets, options: MySettings, run: Run) -> np.ndarray: ...

`model` maps float images N×C×H×W in [0, 1] to logits; the function returns float32 N×C×H×W maps of
softmax(model(x))[target], in one call for all images (attribute() checks the inputs first) and as a
pure function of its inputs and (run.seed, run.first_index + i) for image i, so a shard's maps do not
depend on where it starts. Every module of this package is imported when the registry is first used.

What travels is a Spec (the method, its options, the rows per forward pass), made from params.yaml's
`attribution` section by Spec.of(params.attribution): one call shape for every R,
attribute(model, images, targets, spec, seed=..., ...)."""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn
from tqdm.auto import tqdm

from impactx import ImpactXError
from impactx.config import InferenceParams, Section
from impactx.inference import prepare


class NoSettings(Section):
    """An R with no settings of its own (deeplift): `attribution.<name>: {}`."""


class ProgressBar(Protocol):
    """What an R reports its images to: tqdm, or Progress below."""

    def update(self, n: int = 1) -> object: ...


@dataclass(frozen=True)
class Run:
    """Where a call sits in the whole run: its random draws, its device, its progress bar."""

    seed: int = 0  # image i draws from np.random.RandomState([seed, first_index + i])
    first_index: int = 0
    device: torch.device | None = None  # None: the model's own
    batch_size: int = 500  # rows per forward pass
    progress: ProgressBar | None = None  # anything with update(n): tqdm, or Progress


@dataclass(frozen=True)
class Attribution:
    name: str  # params.yaml attribution.method, and the section attribution.<name>
    label: str  # in the tables: "SHAP of A"
    explainer: str  # what produced the maps, for maps.json
    settings: type[BaseModel]  # the schema of attribution.<name>
    cost: str | None  # the setting that counts model evaluations per image (None: one)
    compute: Callable[..., np.ndarray]  # (model, images, targets, options, run) -> float32 N×C×H×W
    module: str
    forward_only: bool = False  # no gradients: the forward passes run as Spec.inference says

    def evals(self, options: BaseModel) -> int:
        """Model evaluations per image: the unit of the progress bar's rate."""
        return int(getattr(options, self.cost)) if self.cost else 1


REGISTRY: dict[str, Attribution] = {}


def register(
    name: str,
    *,
    label: str,
    explainer: str,
    settings: type[BaseModel] = NoSettings,
    cost: str | None = None,
    forward_only: bool = False,
):
    """Decorate an R `(model, images, targets, options, run) -> np.ndarray`; `cost` names the field of
    `settings` that counts its model evaluations per image; `forward_only` says it takes no gradients, so
    its model runs as params.yaml's `inference:` says (compiled, bfloat16, channels_last)."""

    def deco(fn):
        if cost is not None and cost not in settings.model_fields:
            raise TypeError(f"attribution '{name}': cost '{cost}' is not a field of {settings.__name__}")
        REGISTRY[name] = Attribution(name, label, explainer, settings, cost, fn, fn.__module__, forward_only)
        return fn

    return deco


_DISCOVERED = False


def _discover() -> None:
    global _DISCOVERED
    if not _DISCOVERED:
        _DISCOVERED = True
        for mod in pkgutil.iter_modules(__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{__name__}.{mod.name}")


def get(name: str) -> Attribution:
    _discover()
    if name not in REGISTRY:
        raise ImpactXError(f"attribution.method '{name}' is unknown: use one of {', '.join(names())}")
    return REGISTRY[name]


def names() -> list[str]:
    _discover()
    return sorted(REGISTRY)


def check_name(v: str) -> str:
    """A pydantic validator's body for a field that names an R (attribution.method, refresh_method)."""
    if v not in names():
        raise ValueError(f"'{v}' is not an attribution method: use one of {names()}")
    return v


def sections() -> dict[str, type[BaseModel]]:
    """attribution.<name> → schema, for impactx.params."""
    _discover()
    return {r.name: r.settings for r in REGISTRY.values()}


@dataclass(frozen=True)
class Spec:
    """Which R, with which options, how many rows per forward pass: what a caller hands to attribute()."""

    method: str
    options: BaseModel
    batch_size: int = 500
    inference: InferenceParams | None = None  # how a forward-only R's passes run; None: float32 eager

    @classmethod
    def of(cls, section, inference: InferenceParams | None = None) -> Spec:
        """From params.yaml's `attribution` section (its method, attribution.<method>, its batch_size) and
        its `inference` section."""
        return cls(section.method, getattr(section, section.method), section.batch_size, inference)

    @classmethod
    def default(cls, method: str, cost: int | None = None, batch_size: int = 500) -> Spec:
        """`method` with its schema's defaults, its cost setting set to `cost` (single-stage refreshes)."""
        r = get(method)
        options = r.settings()
        if cost is not None and r.cost:
            options = options.model_copy(update={r.cost: cost})
        return cls(method, options, batch_size)

    @property
    def attribution(self) -> Attribution:
        return get(self.method)

    def describe(self) -> dict:
        """The settings that made the maps, for maps.json: method, its options, batch_size."""
        out = {"method": self.method, **self.options.model_dump(), "batch_size": self.batch_size}
        if self.attribution.forward_only and self.inference is not None and not self.inference.exact:
            out["inference"] = self.inference.model_dump()
        return out


def attribute(
    model: nn.Module,
    images: torch.Tensor,
    targets,
    spec: Spec,
    *,
    seed: int = 0,
    first_index: int = 0,
    device: torch.device | None = None,
    progress=None,
) -> np.ndarray:
    """Maps of softmax(model(x))[target] for float images N×C×H×W in [0, 1]: float32 N×C×H×W."""
    r = spec.attribution
    if not isinstance(spec.options, r.settings):
        raise TypeError(
            f"attribution '{r.name}' takes {r.settings.__name__} options, not {type(spec.options).__name__}"
        )
    targets = np.asarray(targets).astype(np.int64)
    if images.ndim != 4 or len(targets) != len(images):
        raise ValueError(f"attribute: images must be N×C×H×W with one target each (got {tuple(images.shape)}, "
                         f"{len(targets)} targets)")  # fmt: skip
    device = device or next(model.parameters()).device
    run = Run(seed, first_index, device, spec.batch_size, progress)
    net = prepare(model, spec.inference if r.forward_only else None, device)
    return r.compute(net, images, targets, spec.options, run)


class Progress:
    """A tqdm bar over images that also shows R's model evaluations per second; pass it as `progress`."""

    def __init__(self, total: int, spec: Spec, desc: str = "attribution maps"):
        self.bar = tqdm(total=total, desc=desc, unit="img", smoothing=0.05, mininterval=2)
        self.evals, self.t0, self.done = spec.attribution.evals(spec.options), time.perf_counter(), 0

    def update(self, n: int = 1, computed: bool = True) -> None:
        """n images more; computed=False for images taken from a finished shard (no rate)."""
        if computed:
            self.done += n
            rate = self.done * self.evals / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} evals/s", refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def label(section) -> str:
    """The training and teacher maps in words, for the tables: "SHAP of A", "Integrated Gradients of
    models:/cifar10-cnn3-baseline/1"."""
    return f"{get(section.method).label} of {section.teacher or 'A'}"


def map_seed(params, seed: int) -> int:
    """The seed of R's random draws (SHAP's ties, GradientSHAP's baselines) for replicate `seed`: its own
    for maps of its A; the data seed for a teacher, whose maps are then the same for every replicate
    (one teacher, one set of maps: the attribution stage computes them once and the other seeds reuse them)."""
    return seed if params.attribution.teacher is None else params.seed


class Probability(nn.Module):
    """softmax(model(x)): what every attribution method explains (a module, as captum's DeepLift needs)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x).float(), dim=1)
