"""The `impactx` command (also `python -m impactx`): explain images with a registered model.

    impactx explain IMAGE_OR_FOLDER... --model models:/<name>@champion [--out DIR]

Prints the class and its probability per image and writes DIR/<name>.png: the image, the map overlaid
and its colour scale. Images of any size are resized to the model's input (with a note). The model is
one the pipeline registered, rebuilt by this package from its weights-only checkpoint
(impactx.serving.load_logged): no code or pickle from the registry runs. The class and the map come
from one forward pass. Bad input (a file that is not an image, a model that does not load) is one line
on stderr and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from impactx import ImpactXError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
BATCH = 256  # images per predict call


def image_files(paths: list[str]) -> list[Path]:
    """Named files as given; folders: their image files (by suffix), recursively, sorted."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise ImpactXError(f"{p} does not exist: give image files or folders of images")
    if not found:
        raise ImpactXError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(paths)}")
    return found


def read_image(path: Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, str | None]:
    """The image as uint8 C×H×W at the model's size, and a note when it had to be resized."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    try:
        with Image.open(path) as src:
            im = src.convert("L" if c == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ImpactXError(
            f"{path} is not an image PIL can read ({type(e).__name__}): remove it or convert it"
        ) from None
    note = None
    if im.size != (w, h):
        note = f"note: {path} is {im.size[0]}×{im.size[1]}, resized to the model's {w}×{h}"
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return (a[None] if a.ndim == 2 else a.transpose(2, 0, 1)), note


def resolve_tracking_uri(given: str | None) -> str | None:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else params.yaml's mlflow.tracking_uri when run in a
    project (its artifact locations pointed at this project's mlartifacts/ if the project was copied or
    moved: tracking.setup), else none."""
    if given:
        return given
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if Path("params.yaml").exists():  # here, not at the top: `impactx --help` stays instant
        import mlflow

        from impactx import tracking
        from impactx.params import load_params

        tracking.setup(load_params())  # a copied or moved project's store reads its own mlartifacts/
        return mlflow.get_tracking_uri()
    return None


def load_model(uri: str, tracking: str | None):
    """The logged model, rebuilt from its weights-only checkpoint by this package (impactx.serving.load_logged:
    none of the registry's code or pickles run), and its dataset info; one line when it cannot be loaded."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow.exceptions import MlflowException

    from impactx import serving

    if tracking:
        mlflow.set_tracking_uri(tracking)
    elif uri.startswith(("models:/", "runs:/")):  # MLflow's default store would be a new, empty ./mlflow.db
        raise ImpactXError(
            f"no tracking store to find '{uri}' in: run in the impactx project (its params.yaml names the store), "
            "or give --tracking-uri / MLFLOW_TRACKING_URI"
        )
    try:
        method, net, info = serving.load_logged(uri)
    except (MlflowException, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f" (tracking URI {mlflow.get_tracking_uri()})"
        raise ImpactXError(f"cannot load model '{uri}'{where}: {first}") from None
    except KeyError:
        raise ImpactXError(
            f"'{uri}' is not an impactx model (its MLmodel names no weights-only checkpoint and dataset info):"
            " give a model the pipeline registered"
        ) from None
    return method, net, info


def explain(args) -> None:
    import torch

    from impactx.figures import explanation_figure  # matplotlib: loaded when a command needs it
    from impactx.serving import predict_table
    from impactx.train import resolve_device

    files = image_files(args.images)
    method, net, info = load_model(args.model, resolve_tracking_uri(args.tracking_uri))
    device = resolve_device(args.device)
    torch.set_flush_denormal(True)  # weight-decayed weights: see impactx.stage.run_stage
    read = [read_image(f, tuple(info.image_shape)) for f in files]  # every file checked before anything is written
    for _, note in read:
        if note:
            print(note, file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = unique_names(files)
    for start in range(0, len(files), BATCH):
        x = np.stack([a for a, _ in read[start : start + BATCH]]).astype(np.float32)
        table = predict_table(net, method, info, x, {"pixels": "uint8", "explain": not args.no_map}, device)
        for i, row in enumerate(table.itertuples()):
            f = files[start + i]
            print(f"{f}: {row.class_name} ({row.probability:.3f})")
            m = None if row.map is None else np.asarray(row.map, dtype=np.float32)
            title = f"{row.class_name} ({row.probability:.2f})"
            explanation_figure(x[i] / 255, m, title, out / f"{names[start + i]}.png")
    print(f"wrote {len(files)} PNGs to {out}/", file=sys.stderr)


def unique_names(files: list[Path]) -> list[str]:
    """Output names, one per file, never the same twice: the file's stem; a stem several files share gets
    its folder and suffix (dup/x.png → dup_x_png); a name still taken (the same file given twice) gets -2, -3."""
    stems = Counter(f.stem for f in files)
    names: list[str] = []
    for f in files:
        name = f.stem if stems[f.stem] == 1 else "_".join([*f.parent.parts[-2:], f.stem, f.suffix.lstrip(".")])
        base, k = name, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="impactx", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explain", help="class and map of each image, from a registered model")
    ex.add_argument("images", nargs="+", help="image files or folders of images (any size)")
    ex.add_argument("--model", required=True, help="MLflow model URI, e.g. models:/digits-lenet5-impactx@champion")
    ex.add_argument("--out", default="explanations", help="folder for the PNGs (default: explanations)")
    ex.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else params.yaml here)")
    ex.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    ex.add_argument("--no-map", action="store_true", help="class only: skip the map")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        explain(args)
    except ImpactXError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
