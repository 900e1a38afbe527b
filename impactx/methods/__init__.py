"""The method registry: every row of the comparison table is one entry, in one module of this package.

    baseline          A = M(x), stage 1; its map is SHAP of A, post hoc        (baseline.py)
    impactx           C(M(x), LEP(x)) and D(LEP(x)); CE + λ·MSE(r, D(LEP(x)))  (impactx.py)
    impactx_lambda0   a control: IMPACTX with λ = 0, the extra branch without the maps (impactx_lambda0.py)
    abn               attention branch network; L_per + L_att                (abn.py)
    wae               explanation-encoder attention; CE                       (wae.py)

A method is a builder function decorated with @register. The builder gets what stage 1 left
(`Stage1`: the dataset description, A's checkpoint, the SHAP maps) and the method's validated params
section, and returns an untrained nn.Module that owns its loss and its map:

    model(x)              → class logits                     (float images in [0, 1], N×C×H×W)
    model.loss(x, y, r)   → {"loss": total, other parts...}  (r: the scaled SHAP maps of the batch)
    model.explain(x)      → (logits, map N×C×H×W)            (not needed when post_hoc=True)

Every module of this package is imported when the registry is first used, so adding a method is adding
impactx/methods/<name>.py (with its params schema) and a `<name>:` section in params.yaml."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from impactx import ImpactXError, layout
from impactx.config import ModelParams, TrainParams
from impactx.data import DatasetInfo
from impactx.io import load_checkpoint, read, save_torch
from impactx.maps import load_scaled_maps
from impactx.model import build_baseline


@dataclass
class Stage1:
    """What a stage-2 method is built from."""

    info: DatasetInfo  # classes, image shape, normalisation
    model: ModelParams  # the backbone
    checkpoint: Path | None = None  # A's trained weights; None: a bare model, weights loaded afterwards
    maps: np.ndarray | None = None  # scaled SHAP maps of the training images (N×C×H×W), None when loading
    labels: np.ndarray | None = None  # their labels

    @classmethod
    def from_layout(cls, ds, model: ModelParams, seed: int, built_on_stage1: bool = True) -> Stage1:
        """Stage 1 of `seed` as the pipeline wrote it (layout); built_on_stage1=False: only the data
        (for the baseline, which is stage 1)."""
        if not built_on_stage1:
            return cls(ds.info, model)
        checkpoint = layout.model("baseline", seed)
        if not checkpoint.exists():
            raise ImpactXError(f"{checkpoint} not found: run stage 1 first (dvc repro baseline@{seed})")
        return cls(ds.info, model, checkpoint, load_scaled_maps(layout.attribution_maps(seed)), ds.train.y)

    def maps_tensor(self) -> torch.Tensor | None:
        return None if self.maps is None else torch.from_numpy(self.maps)

    def baseline(self, trained: bool = True):
        """A from its checkpoint; trained=False: A's seeded initial weights (call seed_everything first)."""
        return build_baseline(self.model, self.info, checkpoint=self.checkpoint if trained else None)


@dataclass(frozen=True)
class Method:
    name: str  # params.yaml `methods`/`controls`, stage names, results/<name>/, registered model names
    label: str  # its row in the comparison table
    map_kind: str  # what its explanation map is
    section: str  # its params.yaml section
    params: type[TrainParams]  # the section's schema
    build: Callable[[Stage1, TrainParams], nn.Module]
    fixed: dict = field(default_factory=dict)  # a control's settings that override the section
    control_of: str | None = None  # a control: the method whose section it shares
    post_hoc: bool = False  # its map is SHAP of the model (the baseline), not model.explain
    stage: int = 2  # 1: built from the data alone (the baseline); 2: built on stage 1 of its seed
    module: str = ""  # where it is defined

    def settings(self, params) -> TrainParams:
        """Its section of params.yaml, with a control's fixed settings applied."""
        section = params.section(self.section)
        return section.model_copy(update=self.fixed) if self.fixed else section


REGISTRY: dict[str, Method] = {}


def register(
    name: str,
    *,
    label: str,
    map_kind: str,
    params: type[TrainParams] = TrainParams,
    section: str | None = None,
    control_of: str | None = None,
    fixed: dict | None = None,
    post_hoc: bool = False,
    stage: int = 2,
):
    """Decorate a builder `(stage1: Stage1, settings) -> nn.Module`. A control shares the section (and
    the builder) of `control_of`, with `fixed` settings (field names) applied on top."""

    def deco(build):
        schema, sec = params, section or name
        if control_of is not None:
            base = REGISTRY[control_of]
            schema, sec = base.params, base.section
        REGISTRY[name] = Method(
            name, label, map_kind, sec, schema, build, dict(fixed or {}), control_of, post_hoc, stage, build.__module__
        )
        return build

    return deco


def get(name: str) -> Method:
    _discover()
    if name not in REGISTRY:
        raise ImpactXError(f"unknown method '{name}': use one of {names()} (impactx/methods/)")
    return REGISTRY[name]


def names(controls: bool | None = None) -> list[str]:
    """Registered names: every one, only controls (True), or only stage-2 methods (False)."""
    _discover()
    ordered = sorted(REGISTRY.values(), key=lambda m: (m.stage, m.name))  # stage 1 (the baseline) first
    return [m.name for m in ordered if controls is None or (bool(m.control_of) == controls and m.stage == 2)]


def sections() -> dict[str, type[TrainParams]]:
    """params.yaml section → schema, for config.params_model()."""
    _discover()
    return {m.section: m.params for m in REGISTRY.values()}


def rows(params) -> list[str]:
    """The table's rows: the baseline, then each listed method followed by its listed controls."""
    out = ["baseline"]
    for name in params.methods:
        out += [name] + [c for c in params.controls if get(c).control_of == name]
    return out + [c for c in params.controls if c not in out]


_DISCOVERED = False


def _discover() -> None:
    """Import every module of this package once: each registers its methods."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


# ---------------------------------------------------------------- checkpoints


def build(name: str, stage1: Stage1, params) -> nn.Module:
    """The untrained model of method `name` (call seed_everything first: new layers draw from the seed)."""
    method = get(name)
    return method.build(stage1, method.settings(params))


def save(path: Path, name: str, settings: TrainParams, model: nn.Module, training: dict | None = None) -> None:
    """A checkpoint that rebuilds itself: the method, its settings, the weights (no pickled code) and
    how its training went (best_epoch, epochs_run, best_val_accuracy)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {"method": name, "settings": settings.model_dump(), "state_dict": state, "training": training or {}}
    save_torch(path, ckpt)


def training_of(path: Path) -> dict:
    """How the checkpoint's training went: best_epoch, epochs_run, best_val_accuracy ({} if not recorded)."""
    return read(path, load_checkpoint).get("training", {})


def load(path: Path, info: DatasetInfo, model: ModelParams) -> tuple[Method, nn.Module]:
    """A trained model from its checkpoint: the bare architecture (no download), then its weights."""
    path = Path(path)
    if not path.exists():
        raise ImpactXError(f"{path} not found: run `dvc repro` (it trains every method of params.yaml)")
    ckpt = read(path, load_checkpoint)
    method = get(ckpt["method"])
    settings = method.params.model_validate(ckpt["settings"])
    bare = Stage1(info, model.model_copy(update={"pretrained": False}))
    net = method.build(bare, settings)
    net.load_state_dict(ckpt["state_dict"])
    return method, net
