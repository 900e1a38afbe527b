"""The registered model as an MLflow pyfunc: for each image, the class index and name, the probabilities
and the method's own map, from one forward pass (docs/guide/serving.md).

It is logged as "models from code": impactx/pyfunc_model.py and this package travel with the model, and
the weights are the stage's weights-only checkpoint (impactx.methods.save), read with
torch.load(weights_only=True). Loading a registered model therefore unpickles nothing.

Input: float32 images N×C×H×W. Pixels are floats in [0, 1] (params {"pixels": "unit"}, the default) or
whole numbers 0–255 (params {"pixels": "uint8"}); a value outside the chosen range is rejected, never
silently rescaled. params {"explain": false} skips the map."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from impactx import ImpactXError, methods
from impactx.config import ModelParams
from impactx.data import DatasetInfo
from impactx.train import resolve_device

PIXELS = {"unit": 1.0, "uint8": 255.0}  # params.pixels → the largest value an input may have
DEFAULT_PARAMS = {"explain": True, "pixels": "unit"}
COLUMNS = ("class_index", "class_name", "probability", "probabilities", "map")
CHECKPOINT, INFO = "checkpoint", "info"  # the pyfunc model's artifacts
# the distributions the loaded model imports (tests/test_serving.py checks the list is complete)
REQUIREMENTS = ("torch", "torchvision", "numpy", "pandas", "pydantic", "pyyaml", "tqdm")


def to_unit(images: np.ndarray, pixels: str, image_shape) -> torch.Tensor:
    """Checked input → float tensor in [0, 1]. Raises ImpactXError naming the problem and the fix."""
    if pixels not in PIXELS:
        raise ImpactXError(f"params.pixels is '{pixels}': use 'unit' (floats in [0, 1]) or 'uint8' (0-255)")
    x = np.asarray(images)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ImpactXError(f"images have shape {x.shape}: this model takes N×{'×'.join(map(str, image_shape))}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ImpactXError("images contain NaN or infinite values")
    top, lo, hi = PIXELS[pixels], float(x.min(initial=0)), float(x.max(initial=0))
    if lo < 0 or hi > top:
        hint = ' (values up to 255: pass params {"pixels": "uint8"})' if pixels == "unit" and hi <= 255 else ""
        raise ImpactXError(f"pixel values span [{lo:g}, {hi:g}], outside [0, {top:g}] for pixels '{pixels}'{hint}")
    if pixels == "uint8" and not np.array_equal(x, np.round(x)):
        raise ImpactXError("pixels 'uint8' takes whole numbers 0-255: these have fractions (floats in [0, 1]?"
                           " pass params {\"pixels\": \"unit\"})")  # fmt: skip
    return torch.from_numpy(x / top)


@torch.no_grad()
def predict_table(net, method, info: DatasetInfo, images, params: dict | None = None, device="cpu") -> pd.DataFrame:
    """One row per image: class_index, class_name, probability (of that class), probabilities (K) and
    map (C×H×W nested lists; None for a post-hoc method such as the baseline, or with explain false)."""
    p = {**DEFAULT_PARAMS, **(params or {})}
    x = to_unit(images, p["pixels"], info.image_shape).to(device)
    net.to(device).eval()
    own_map = bool(p["explain"]) and not method.post_hoc
    with torch.inference_mode():
        logits, maps = net.explain(x) if own_map else (net(x), None)  # N×K, N×C×H×W
    prob = torch.softmax(logits.float(), 1).cpu().numpy()
    pred = prob.argmax(1)
    maps = maps.float().cpu().numpy() if maps is not None else [None] * len(x)
    rows = [
        (int(k), info.classes[k], float(pr[k]), pr.tolist(), None if m is None else m.tolist())
        for k, pr, m in zip(pred, prob, maps, strict=False)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def write_artifacts(folder: Path, info: DatasetInfo, model: ModelParams, checkpoint: Path) -> dict:
    """The pyfunc model's artifacts: the checkpoint and what rebuilds it (dataset info, backbone). A
    checkpoint that is a symlink (DVC's `cache.type: symlink`, or a linked file) is copied into `folder`
    first: MLflow refuses an artifact whose real path leaves its folder."""
    meta = folder / "info.json"
    meta.write_text(json.dumps({"info": info.to_json(), "model": model.model_dump()}, indent=2))
    if Path(checkpoint).is_symlink():
        checkpoint = shutil.copyfile(checkpoint, folder / Path(checkpoint).name)
    return {CHECKPOINT: str(checkpoint), INFO: str(meta)}


def load_artifacts(artifacts: dict) -> tuple[methods.Method, torch.nn.Module, DatasetInfo]:
    meta = json.loads(Path(artifacts[INFO]).read_text())
    info = DatasetInfo.from_json(meta["info"])
    method, net = methods.load(Path(artifacts[CHECKPOINT]), info, ModelParams.model_validate(meta["model"]))
    return method, net.eval(), info


def load_logged(uri: str) -> tuple[methods.Method, torch.nn.Module, DatasetInfo]:
    """A model this pipeline logged (models:/<name>@<alias>, models:/<name>/<version>, runs:/..., or a
    model folder), rebuilt by this package from its weights-only checkpoint and dataset info. Nothing of
    the logged model runs: not its code (pyfunc_model.py, code_paths), not a pickle a forged version may
    carry. An MLflow model without those artifacts is not one of ours: MlflowException, KeyError or
    OSError, for the caller's one-line error."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(uri))
    flavor = mlflow.models.Model.load(str(local / "MLmodel")).flavors["python_function"]
    return load_artifacts({k: local / flavor["artifacts"][k]["path"] for k in (CHECKPOINT, INFO)})


class ExplainingModel(PythonModel):
    """predict(images, params) → predict_table; model_config {"device": "auto" | "cpu" | "cuda[:N]"}."""

    def load_context(self, context):
        self.method, self.net, self.info = load_artifacts(context.artifacts)
        self.device = resolve_device((context.model_config or {}).get("device", "auto"))
        torch.set_flush_denormal(True)  # weight-decayed weights: see impactx.stage.run_stage

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        try:
            return predict_table(self.net, self.method, self.info, model_input, params, self.device)
        except ImpactXError as e:  # the scoring server answers 400 with this message
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None


def wait_until_serving(port: int, server: subprocess.Popen, timeout: float = 120) -> str:
    """The /invocations URL of `mlflow models serve` on 127.0.0.1:`port` once its /ping answers; raises
    ImpactXError when the server process ends first or is not up after `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return f"http://127.0.0.1:{port}/invocations"
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise ImpactXError(
                    f"mlflow models serve did not start on port {port}: run it by hand to see why"
                ) from None
            time.sleep(0.5)
