"""params.yaml's fixed sections: pydantic schemas that import nothing of the package above them.

The sections every pipeline has (data, model, recipe, attribution, shards, evaluate, ...) are declared
here. Each registered method (impactx.methods) and each attribution method (impactx.attribution) declares
its own section; impactx.params composes them into the full schema and validates params.yaml."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """A params.yaml section: unknown keys and wrong types fail; `1e-3` is a float."""

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


class MlflowParams(Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "impactx"
    register_models: bool = True


class DataParams(Section):
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


class ModelParams(Section):
    backbone: str = (
        "lenet5"  # lenet5 | cnn3 | mobilenet_v2 | efficientnet_b2 | tf_efficientnet_b2 (impactx/backbones.py)
    )
    pretrained: bool = False  # ImageNet weights for the torchvision backbones
    weights: str = "DEFAULT"  # torchvision weight name, e.g. IMAGENET1K_V1
    weights_path: str | None = None  # a local weights file with torchvision's (or timm's) keys, instead of downloading


class TrainParams(Section):
    """The training settings every method's section has; a method's schema may add its own keys."""

    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class RecipeParams(Section):
    """How every method trains, the same for all so that their budgets compare: augmentation (each SHAP
    map is cropped and flipped with its image), the learning-rate schedule and early stopping."""

    crop_padding: int = Field(0, ge=0)  # random crop back to size after zero padding by this much; 0: none
    flip: bool = False  # random horizontal flip (not for digits or text)
    schedule: Literal["constant", "cosine"] = "constant"  # learning rate over each method's epochs
    patience: int | None = Field(None, gt=0)  # stop after this many epochs without a better val accuracy


class AttributionParams(Section):
    """R, the method that makes the training maps (impactx.attribution). impactx.params adds one section
    per registered R (attribution.shap_partition, attribution.integrated_gradients, ...)."""

    method: str = "shap_partition"  # a registered R: impactx/attribution/<method>.py
    teacher: str | None = None  # None: R of A itself; else an MLflow model of this pipeline, e.g.
    #                             models:/cifar10-mobilenet_v2-baseline/1 (pin a version: DVC sees the string)
    batch_size: int = Field(500, gt=0)  # model rows per forward pass


class DaskTLS(Section):
    """Client certificates for a scheduler at a tls:// address: PEM files, as `dask scheduler --tls-*`
    takes them (docs: orchestration)."""

    ca_file: str  # the CA that signed the scheduler's, the workers' and this client's certificates
    cert: str  # this client's certificate
    key: str  # its private key


class InferenceParams(Section):
    """How forward-only model passes run (impactx.inference): the SHAP maps of the attribution, teacher
    and evaluate stages, and the evaluate stage's MoRF/LeRF curves. float32 eager is exact; the rest
    trade exactness for speed."""

    compile: bool = False  # torch.compile (inductor), cached in .cache/torchinductor; eager on failure
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: autocast, outputs back in float32
    channels_last: bool = False  # NHWC memory format for the images and the weights

    @property
    def exact(self) -> bool:
        """float32 eager: the model as it is, the values of before."""
        return not self.compile and self.dtype == "float32" and not self.channels_last


class TrainingParams(InferenceParams):
    """How every method's training step runs (impactx.train): model.loss and its backward compiled
    (torch.compile, inductor), under bfloat16 autocast, in channels_last. The same three settings as
    `inference:`; float32 eager (the default) is exact. A DVC param of the baseline and train stages."""


class ShardParams(Section):
    """Where the attribution stage computes its shards (impactx.shards): only the speed depends on these."""

    size: int = Field(256, gt=0)  # images per resumable shard (.attribution_work/)
    workers: int = Field(1, gt=0)  # processes (local) or LocalCluster workers (dask), one shard each at a time
    executor: Literal["local", "dask"] = "local"  # dask: shards as Prefect tasks on a Dask cluster
    dask_address: str | None = None  # scheduler address of a running cluster; None starts a LocalCluster
    gpus_per_shard: float = Field(0.0, ge=0)  # Dask resource "GPU" each shard task needs (workers: --resources GPU=1)
    dask_tls: DaskTLS | None = None  # certificates for a tls:// dask_address; None: a plain tcp:// cluster

    @model_validator(mode="after")
    def _tls_with_tls_address(self):
        tls_address = (self.dask_address or "").startswith("tls://")
        if tls_address and self.dask_tls is None:
            raise ValueError("dask_address is tls://: set shards.dask_tls (ca_file, cert, key) to connect to it")
        if self.dask_tls is not None and not tls_address:
            raise ValueError("dask_tls is set: give the scheduler's tls:// address in shards.dask_address")
        return self


class EvaluateParams(Section):
    morf_images: int = Field(100, gt=0)
    patch_size: int = Field(4, gt=0)
    steps: int = Field(16, gt=0)
    shap_max_evals: int = Field(500, ge=10)  # post-hoc SHAP of every evaluated model (same-model faithfulness)
    removal: Literal["uniform", "noisy_linear"] = "uniform"  # how MoRF/LeRF remove a patch (impactx.morf)
    figure_images: int = Field(4, gt=0)


class CoreParams(Section):
    """The sections every pipeline has. impactx.params adds one section per registered method, one per
    attribution method, and the checks of names against the registries."""

    seed: int = 0  # data split, MoRF subset and noise: the same for every method and seed
    seeds: list[int] = Field([0], min_length=1)  # one replicate each: the baseline, its maps, every method
    methods: list[str] = ["impactx", "abn", "wae"]  # stage-2 methods compared with the baseline A
    controls: list[str] = ["impactx_lambda0"]  # a method with one setting fixed (IMPACTX with λ = 0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    mlflow: MlflowParams = MlflowParams()
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    recipe: RecipeParams = RecipeParams()
    attribution: AttributionParams = AttributionParams()
    shards: ShardParams = ShardParams()
    inference: InferenceParams = InferenceParams()
    training: TrainingParams = TrainingParams()
    evaluate: EvaluateParams = EvaluateParams()

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v):
            raise ValueError("seeds must be non-negative integers")
        return unique(v)

    def section(self, name: str) -> TrainParams:
        """A method's params section by name (baseline, impactx, abn, ...)."""
        return getattr(self, name)


def unique(v: list) -> list:
    if len(set(v)) != len(v):
        raise ValueError("has a repeated entry: list each once")
    return v


Params = CoreParams  # the type the package annotates with; instances come from impactx.params
