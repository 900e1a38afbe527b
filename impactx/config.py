"""params.yaml schema: every key is declared here, so a typo or a wrong type fails fast with one line."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from impactx import ImpactXError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


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
    backbone: str = "lenet5"  # lenet5 | mobilenet_v2 | efficientnet_b2 (impactx/backbones.py)
    pretrained: bool = False  # ImageNet weights for the torchvision backbones
    weights: str = "DEFAULT"  # torchvision weight name, e.g. IMAGENET1K_V1
    weights_path: str | None = None  # a local state_dict with torchvision's keys, instead of downloading


class TrainParams(_Section):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)


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


class ImpactxParams(TrainParams):
    lambda_: float = Field(1.0, ge=0, alias="lambda")
    latent_dim: int = Field(512, gt=0)


STAGE2_METHODS = ("impactx", "impactx_lambda0", "abn", "wae")  # compared with the baseline A (stage 1)


class EvaluateParams(_Section):
    morf_images: int = Field(100, gt=0)
    patch_size: int = Field(4, gt=0)
    steps: int = Field(16, gt=0)
    shap_max_evals: int = Field(500, ge=10)
    figure_images: int = Field(4, gt=0)


class Params(_Section):
    seed: int = 0  # data split, MoRF subset and noise: the same for every method and seed
    seeds: list[int] = Field([0], min_length=1)  # one replicate each: stage 1, SHAP, every method
    methods: list[Literal[STAGE2_METHODS]] = list(STAGE2_METHODS)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    mlflow: MlflowParams = MlflowParams()
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    finetune: TrainParams = TrainParams()
    shap: ShapParams = ShapParams()
    impactx: ImpactxParams = ImpactxParams()
    abn: TrainParams = TrainParams()
    wae: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()

    @field_validator("methods", mode="before")
    @classmethod
    def _no_baseline(cls, v):
        if isinstance(v, list) and "baseline" in v:
            raise ValueError("the baseline always runs (stage 1): list only the methods compared with it")
        return v

    @field_validator("seeds", "methods")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("has a repeated entry: list each once")
        return v


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ImpactXError naming the first bad key."""
    path = Path(path)
    if not path.exists():
        raise ImpactXError(f"{path} not found: run from the project root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ImpactXError(f"{path} is not valid YAML ({str(e).splitlines()[0]}): fix its syntax") from None
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "<top level>"
        if err["type"] == "extra_forbidden":
            msg = f"{path}: unknown key '{key}': remove it or fix its spelling"
        else:
            msg = f"{path}: {key}: {err['msg']} (got {err.get('input')!r}): fix this value"
        raise ImpactXError(msg) from None
