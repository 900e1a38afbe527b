"""The model R explains: A of a seed (the baseline, stage 1), or `attribution.teacher`, an MLflow model
this pipeline logged. A layer above the attribution methods: it loads checkpoints and MLflow models."""

from __future__ import annotations

from torch import nn

from impactx import ImpactXError, layout, methods, serving, tracking
from impactx.data import DatasetInfo


def explained_model(params, info: DatasetInfo, seed: int) -> tuple[nn.Module, str]:
    """The model R explains, and what it is: A of `seed` (stage 1), or attribution.teacher, an MLflow
    model this pipeline logged (models:/<name>/<version>, runs:/..., or a model folder). The teacher is
    rebuilt from its weights-only checkpoint by this package: none of its code runs."""
    spec = params.attribution.teacher
    if spec is None:
        return methods.load(layout.model("baseline", seed), info, params.model)[1], f"A (seed {seed})"
    from mlflow.exceptions import MlflowException

    tracking.use_store(params)
    try:
        _, net, tinfo = serving.load_logged(spec)
    except (MlflowException, OSError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ImpactXError(f"attribution.teacher '{spec}' is not a model this pipeline logged ({type(e).__name__}:"
                           f" {first}): give models:/<name>/<version>") from None  # fmt: skip
    if tuple(tinfo.image_shape) != tuple(info.image_shape) or tinfo.classes != info.classes:
        raise ImpactXError(
            f"attribution.teacher '{spec}' takes {tinfo.image_shape} images of classes {tinfo.classes[:4]}...: this data"
            f" has {info.image_shape} and {info.classes[:4]}...: train the teacher on the same data"
        )
    return net, f"teacher {spec}"
