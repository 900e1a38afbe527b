"""params.yaml schema: every key is declared here or by a registered method, so a typo or a wrong type
fails fast with one line.

The fixed sections (data, model, shap, evaluate, ...) are declared below. Each method in the registry
(impactx.methods) declares its own section and schema; `params_model()` adds them to the schema."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from impactx import ImpactXError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _floats_written_as_exponents(cls, raw):
        """YAML 1.1 reads `1e-3` (no dot) as a string: take it as the number it plainly is, for float keys."""
        if not isinstance(raw, dict):
            return raw
        out = dict(raw)
        for name, f in cls.model_fields.items():
            for key in {name, f.alias or name}:
                if isinstance(out.get(key), str) and float in (f.annotation, *get_args(f.annotation)):
                    try:
                        out[key] = float(out[key])
                    except ValueError:
                        pass  # not a number: the validation names it
        return out


class MlflowParams(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "impactx"
    register_models: bool = True


class DataParams(_Section):
    source: Literal["digits", "cifar10", "cifar100", "stl10", "imagefolder"] = "digits"
    root: str = "data/raw"  # where downloads go and where local archives are looked for
    download: bool = True
    path: str | None = None  # imagefolder: <path>/<class>/*.png
    test_path: str | None = None  # imagefolder: optional separate test folder
    test_fraction: float = Field(0.2, gt=0, lt=1)  # held out when the source has no test split
    val_fraction: float = Field(0.1, gt=0, lt=1)  # carved out of the training split
    train_limit: int | None = Field(None, gt=0)  # seeded subset of the training split
    test_limit: int | None = Field(None, gt=0)
    image_size: int | None = Field(None, gt=0)  # resize (square) when set; native size otherwise


class ModelParams(_Section):
    backbone: str = "lenet5"  # lenet5 | cnn3 | mobilenet_v2 | efficientnet_b2 (impactx/backbones.py)
    pretrained: bool = False  # ImageNet weights for the torchvision backbones
    weights: str = "DEFAULT"  # torchvision weight name, e.g. IMAGENET1K_V1
    weights_path: str | None = None  # a local state_dict with torchvision's keys, instead of downloading


class TrainParams(_Section):
    """The training settings every method's section has; a method's schema may add its own keys."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class RecipeParams(_Section):
    """How every method trains, the same for all so that their budgets compare: augmentation (each SHAP
    map is cropped and flipped with its image), the learning-rate schedule and early stopping."""

    crop_padding: int = Field(0, ge=0)  # random crop back to size after zero padding by this much; 0: none
    flip: bool = False  # random horizontal flip (not for digits or text)
    schedule: Literal["constant", "cosine"] = "constant"  # learning rate over each method's epochs
    patience: int | None = Field(None, gt=0)  # stop after this many epochs without a better val accuracy


class AttributionParams(_Section):
    """R, the method that makes the training maps (impactx.attribution)."""

    method: Literal["shap_partition", "integrated_gradients", "gradient_shap", "deeplift"] = "shap_partition"
    steps: int = Field(32, gt=0)  # integrated_gradients: points on the path from a black image
    samples: int = Field(16, gt=0)  # gradient_shap: random points between the image and noise baselines
    teacher: str | None = None  # None: R of A itself; else an MLflow model of this pipeline, e.g.
    #                             models:/cifar10-mobilenet_v2-baseline/1 (pin a version: DVC sees the string)


class DaskTLS(_Section):
    """Client certificates for a scheduler at a tls:// address: PEM files, as `dask scheduler --tls-*`
    takes them (README "SHAP shards on a Dask cluster")."""

    ca_file: str  # the CA that signed the scheduler's, the workers' and this client's certificates
    cert: str  # this client's certificate
    key: str  # its private key


class ShapParams(_Section):
    max_evals: int = Field(2000, ge=10)
    batch_size: int = Field(500, gt=0)
    masker: str = "blur(8,8)"
    shard_size: int = Field(256, gt=0)
    pool_size: int = Field(16, gt=0)  # images explained together; masks take pool × max_evals × C·H·W bytes
    workers: int = Field(1, gt=0)  # processes (local) or LocalCluster workers (dask), one shard each at a time
    executor: Literal["local", "dask"] = "local"  # dask: shards as Prefect tasks on a Dask cluster
    dask_address: str | None = None  # scheduler address of a running cluster; None starts a LocalCluster
    gpus_per_shard: float = Field(0.0, ge=0)  # Dask resource "GPU" each shard task needs (workers: --resources GPU=1)
    dask_tls: DaskTLS | None = None  # certificates for a tls:// dask_address; None: a plain tcp:// cluster

    @model_validator(mode="after")
    def _tls_with_tls_address(self):
        tls_address = (self.dask_address or "").startswith("tls://")
        if tls_address and self.dask_tls is None:
            raise ValueError("dask_address is tls://: set shap.dask_tls (ca_file, cert, key) to connect to it")
        if self.dask_tls is not None and not tls_address:
            raise ValueError("dask_tls is set: give the scheduler's tls:// address in shap.dask_address")
        return self


class EvaluateParams(_Section):
    morf_images: int = Field(100, gt=0)
    patch_size: int = Field(4, gt=0)
    steps: int = Field(16, gt=0)
    shap_max_evals: int = Field(500, ge=10)  # post-hoc SHAP of every evaluated model (same-model faithfulness)
    removal: Literal["uniform", "noisy_linear"] = "uniform"  # how MoRF/LeRF remove a patch (impactx.morf)
    figure_images: int = Field(4, gt=0)


def _registry():
    from impactx import methods  # the registry imports this module: import it only when validating

    return methods


class CoreParams(_Section):
    """The sections every pipeline has. `params_model()` adds one field per registered method section."""

    seed: int = 0  # data split, MoRF subset and noise: the same for every method and seed
    seeds: list[int] = Field([0], min_length=1)  # one replicate each: stage 1, SHAP, every method
    methods: list[str] = ["impactx", "abn", "wae"]  # stage-2 methods compared with the baseline A
    controls: list[str] = ["impactx_lambda0"]  # a method with one setting fixed (IMPACTX with λ = 0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    mlflow: MlflowParams = MlflowParams()
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    recipe: RecipeParams = RecipeParams()
    attribution: AttributionParams = AttributionParams()
    shap: ShapParams = ShapParams()
    evaluate: EvaluateParams = EvaluateParams()

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v):
            raise ValueError("seeds must be non-negative integers")
        return _unique(v)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        reg = _registry()
        if "baseline" in v:
            raise ValueError("the baseline always runs (stage 1): list only the methods compared with it")
        allowed = reg.names(controls=False)
        for name in v:
            if name not in allowed:
                raise ValueError(f"'{name}' is not a stage-2 method: use one of {allowed}")
        return _unique(v)

    @field_validator("controls")
    @classmethod
    def _controls(cls, v: list[str]) -> list[str]:
        reg = _registry()
        allowed = reg.names(controls=True)
        for name in v:
            if name not in allowed:
                raise ValueError(f"'{name}' is not a control: use one of {allowed} or []")
        return _unique(v)

    def section(self, name: str) -> TrainParams:
        """A method's params section by name (impactx, abn, finetune, ...)."""
        return getattr(self, name)


def _unique(v: list) -> list:
    if len(set(v)) != len(v):
        raise ValueError("has a repeated entry: list each once")
    return v


@functools.cache
def _params_model(sections: tuple[tuple[str, type], ...]) -> type[CoreParams]:
    fields = {name: (schema, schema()) for name, schema in sections}
    return create_model("Params", __base__=CoreParams, **fields)


def params_model() -> type[CoreParams]:
    """The full schema: CoreParams plus one section per registered method (impactx, abn, wae, finetune...)."""
    return _params_model(tuple(sorted(_registry().sections().items())))


Params = CoreParams  # the type the package annotates with; instances come from params_model()


def parse_params(raw: dict, source: str = "params.yaml") -> CoreParams:
    """Validate a params mapping; raise ImpactXError naming the first bad key and the fix."""
    try:
        return params_model().model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "<top level>"
        if err["type"] == "extra_forbidden":
            msg = f"{source}: unknown key '{key}': remove it or fix its spelling"
        elif err["type"] == "value_error" and isinstance(err.get("input"), dict):  # a rule over a section's keys
            msg = f"{source}: {key}: {err['msg'].removeprefix('Value error, ')}"
        else:
            msg = f"{source}: {key}: {err['msg']} (got {err.get('input')!r}): fix this value"
        raise ImpactXError(msg) from None


def load_params(path: str | Path = "params.yaml") -> CoreParams:
    """Read and validate params.yaml; raise ImpactXError naming the first bad key."""
    path = Path(path)
    if not path.exists():
        raise ImpactXError(f"{path} not found: run from the project root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ImpactXError(f"{path} is not valid YAML ({str(e).splitlines()[0]}): fix its syntax") from None
    if not isinstance(raw, dict):
        raise ImpactXError(f"{path} must be a mapping of sections: see the README's Configuration")
    return parse_params(raw, str(path))
