"""params.yaml, validated: the fixed sections of impactx.config plus one section per registered method
(impactx.methods) and one per attribution method (attribution.<name>, impactx.attribution), with the
names of `methods`, `controls`, `attribution.method` and `model.backbone` checked against those registries.

A typo or a wrong type fails fast with one line naming the key and the fix."""

from __future__ import annotations

import functools
from pathlib import Path

import yaml
from pydantic import ValidationError, create_model, field_validator

from impactx import ImpactXError, attribution, backbones, methods
from impactx.config import AttributionParams, CoreParams, ModelParams, unique


class _CheckedAttribution(AttributionParams):
    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return attribution.check_name(v)


class _CheckedParams(CoreParams):
    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        if "baseline" in v:
            raise ValueError("the baseline always runs (stage 1): list only the methods compared with it")
        allowed = methods.names(controls=False)
        for name in v:
            if name not in allowed:
                raise ValueError(f"'{name}' is not a stage-2 method: use one of {allowed}")
        return unique(v)

    @field_validator("model")
    @classmethod
    def _backbone(cls, v: ModelParams) -> ModelParams:  # checked here, not first in a stage after stage 1
        if v.backbone not in backbones.BACKBONES:
            raise ValueError(f"backbone '{v.backbone}' is not registered: use one of {sorted(backbones.BACKBONES)}")
        return v

    @field_validator("controls")
    @classmethod
    def _controls(cls, v: list[str]) -> list[str]:
        allowed = methods.names(controls=True)
        for name in v:
            if name not in allowed:
                raise ValueError(f"'{name}' is not a control: use one of {allowed} or []")
        return unique(v)


@functools.cache
def _params_model(method_sections: tuple, attribution_sections: tuple) -> type[CoreParams]:
    r_fields = {name: (schema, schema()) for name, schema in attribution_sections}
    attr = create_model("AttributionParams", __base__=_CheckedAttribution, **r_fields)  # type: ignore[call-overload]
    fields = {name: (schema, schema()) for name, schema in method_sections}
    fields["attribution"] = (attr, attr())
    return create_model("Params", __base__=_CheckedParams, **fields)  # type: ignore[call-overload]


def params_model() -> type[CoreParams]:
    """The full schema: CoreParams, one section per registered method (baseline, impactx, abn, wae) and
    one per attribution method under `attribution`."""
    return _params_model(tuple(sorted(methods.sections().items())), tuple(sorted(attribution.sections().items())))


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
        raise ImpactXError(f"{path} must be a mapping of sections: see docs/configuration.md")
    return parse_params(raw, str(path))


def schema_keys(model: type | None = None, prefix: str = "") -> set[str]:
    """Every key path of the schema (`shards.size`, `attribution.shap_partition.masker`, ...), as
    params.yaml spells them (aliases: `impactx.lambda`); nested sections are walked, not listed."""
    from pydantic import BaseModel

    model = model or params_model()
    out: set[str] = set()
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        key = prefix + (field.alias or name)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out |= schema_keys(sub, key + ".")
        else:
            out.add(key)
    return out
