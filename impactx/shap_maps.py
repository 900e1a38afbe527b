"""SHAP attribution maps r = R(A, x, y) for the TRUE class y, with shap's Partition explainer and Image masker.

What is explained: the softmax probability of the true class, so a map sums to
p_y(x) − p_y(background), where the background is the fully masked (e.g. blurred) image.

Scaling (scale_maps): raw values are tiny (their sum is a probability difference spread over C·H·W
pixels), so each map is divided by its own max |value| before it becomes a regression target. Targets
then lie in [-1, 1] with the sign kept (tanh decoder output), every image weighs the same in the MSE,
and relative relevance inside an image, which is all MoRF uses, is unchanged. maps.npy stores raw values.

Large runs are split into shards of `shard_size` images written atomically under a work folder keyed by
the model, images and settings, so a killed run resumes with the missing shards only and the result is
byte-identical to an uninterrupted one (shap's random tie-breaking is seeded per shard).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from impactx import ImpactXError
from impactx.io import save_json, save_npy

MASKER_PATTERN = re.compile(r"^(inpaint_telea|inpaint_ns|blur\(\d+,\s*\d+\))$")


def check_masker(masker: str) -> str:
    if not MASKER_PATTERN.match(masker):
        raise ImpactXError(f"unknown SHAP masker '{masker}': use blur(k,k), inpaint_telea or inpaint_ns")
    return masker


def scale_maps(maps: np.ndarray | torch.Tensor):
    """Per-image max-abs scaling to [-1, 1]; an all-zero map stays zero."""
    lib = torch if isinstance(maps, torch.Tensor) else np
    flat = maps.reshape(len(maps), -1)
    peak = lib.abs(flat).max(1)
    peak = peak.values if lib is torch else peak
    peak = lib.where(peak > 0, peak, lib.ones_like(peak))
    return maps / peak.reshape((-1,) + (1,) * (maps.ndim - 1))


def shap_true_class(
    model,
    images: torch.Tensor,
    targets,
    *,
    max_evals: int,
    batch_size: int,
    masker: str,
    device: torch.device,
    seed: int = 0,
    progress=None,
) -> np.ndarray:
    """Partition-SHAP maps, one image at a time through shap.PartitionExplainer. Returns N×C×H×W float32."""
    import shap

    check_masker(masker)
    n, c, h, w = images.shape
    model = model.to(device).eval()
    target = {"y": 0}

    @torch.no_grad()
    def f(x_hwc: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(x_hwc, dtype=np.float32)).permute(0, 3, 1, 2).to(device)
        p = torch.softmax(model(x).float(), dim=1)[:, target["y"]]
        return p.cpu().numpy()[:, None]

    image_masker = shap.maskers.Image(masker, shape=(h, w, c))
    explainer = shap.PartitionExplainer(f, image_masker)
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.empty((n, c, h, w), np.float32)
    np.random.seed(seed)  # shap breaks exact priority ties with np.random
    for i in range(n):
        target["y"] = int(targets[i])
        # shap's Image masker caches the blurred image under id(x); a new row array can reuse a freed
        # array's id and get the previous image's blur as its background. Forget the cache per image.
        image_masker.last_xid = None
        sv = explainer(hwc[i : i + 1], max_evals=max_evals, batch_size=batch_size, silent=True)
        out[i] = np.asarray(sv.values[0, ..., 0], np.float32).transpose(2, 0, 1)
        if progress is not None:
            progress.update(1)
    return out


def _key(model, x: np.ndarray, y: np.ndarray, settings: dict) -> str:
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().numpy().tobytes())
    h.update(x.tobytes())
    h.update(y.tobytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def compute_maps(
    model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    max_evals: int,
    batch_size: int,
    masker: str,
    shard_size: int,
    seed: int,
    device: torch.device,
    work_root: Path,
) -> tuple[np.ndarray, Path]:
    """SHAP maps for uint8 images x (N×C×H×W) and labels y, in resumable shards.
    Returns the raw float32 maps and the work folder (delete it once the maps are saved)."""
    from impactx.data import to_float

    check_masker(masker)
    settings = dict(max_evals=max_evals, batch_size=batch_size, masker=masker, shard_size=shard_size, seed=seed)
    work = Path(work_root) / _key(model, x, y, settings)[:16]
    work.mkdir(parents=True, exist_ok=True)
    n_shards = (len(x) + shard_size - 1) // shard_size
    shard_paths = [work / f"shard_{s:05d}.npy" for s in range(n_shards)]
    done = sum(p.exists() for p in shard_paths)
    if done:
        print(f"shap: resuming, {done}/{n_shards} shards already in {work}", flush=True)
    bar = tqdm(total=len(x), desc="shap maps", unit="img", smoothing=0.05, mininterval=2)
    for s, path in enumerate(shard_paths):
        lo, hi = s * shard_size, min((s + 1) * shard_size, len(x))
        if path.exists():
            bar.update(hi - lo)
            continue
        maps = shap_true_class(
            model,
            to_float(x[lo:hi]),
            y[lo:hi],
            max_evals=max_evals,
            batch_size=batch_size,
            masker=masker,
            device=device,
            seed=seed + s,
            progress=bar,
        )
        save_npy(path, maps)
    bar.close()
    maps = np.concatenate([np.load(p) for p in shard_paths])
    return maps, work


def save_maps(maps: np.ndarray, meta: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    save_npy(out_dir / "maps.npy", maps)
    save_json(out_dir / "maps.json", meta)


def discard_work(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
