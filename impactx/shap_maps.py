"""SHAP attribution maps r = R(A, x, y) for the TRUE class y: Partition SHAP with shap's Image masker.

partition_shap computes shap.PartitionExplainer's values for many images per forward pass (impactx.owen);
shap_true_class is shap itself, one image at a time, kept as the reference for tests and benchmarks.

What is explained: the softmax probability of the true class, so a map sums to
p_y(x) − p_y(background), where the background is the fully masked (e.g. blurred) image.

Scaling (scale_maps): raw values are tiny (their sum is a probability difference spread over C·H·W
pixels), so each map is divided by its own max |value| before it becomes a regression target. Targets
then lie in [-1, 1] with the sign kept (tanh decoder output), every image weighs the same in the MSE,
and relative relevance inside an image, which is all MoRF uses, is unchanged. maps.npy stores raw values.

Large runs are split into shards of `shard_size` images written atomically under a work folder keyed by
the model, images and settings, so a killed run resumes with the missing shards only and the result is
byte-identical to an uninterrupted one (ties are broken by a normal draw seeded per image: [seed, index]).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from impactx import ImpactXError, layout
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


def partition_shap(
    model,
    images: torch.Tensor,
    targets,
    *,
    max_evals: int,
    batch_size: int,
    masker: str = "blur(8,8)",
    seed: int = 0,
    first_index: int = 0,
    pool: int = 16,
    device: torch.device | None = None,
    progress=None,
) -> np.ndarray:
    """Partition-SHAP maps of softmax(model(x))[target], many images per forward pass (impactx.owen).

    images: float N×C×H×W in [0, 1]; targets: N class indices; returns float32 N×C×H×W, equal to
    shap.PartitionExplainer with shap.maskers.Image(masker) up to float rounding of the model outputs.
    Maskers: blur(k,k), inpaint_telea, inpaint_ns. Image i breaks priority ties with
    np.random.RandomState([seed, first_index + i]), so a shard's maps do not depend on where it starts.
    """
    from impactx.owen import owen_values

    check_masker(masker)
    device = device or next(model.parameters()).device
    model = model.to(device).eval()
    seeds = [[seed, first_index + i] for i in range(len(images))]
    return owen_values(
        model,
        images,
        targets,
        max_evals=max_evals,
        batch_size=batch_size,
        masker=masker,
        seeds=seeds,
        pool=pool,
        device=device,
        progress=progress,
    )


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
    first_index: int = 0,
    progress=None,
) -> np.ndarray:
    """The reference: shap.PartitionExplainer, one image at a time, seeded like partition_shap.
    Returns N×C×H×W float32. Slow; kept for tests and benchmarks/shap_throughput.py."""
    import shap

    check_masker(masker)
    n, c, h, w = images.shape
    model = model.to(device).eval()
    target = {"y": 0}
    # OpenCV inpaints 8-bit images, so inpaint maskers see pixels in 0..255 and the model gets them back /255
    scale = 255.0 if masker.startswith("inpaint") else 1.0

    @torch.no_grad()
    def f(x_hwc: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(x_hwc, dtype=np.float32)).permute(0, 3, 1, 2).to(device)
        if scale != 1.0:
            x = x / scale
        p = torch.softmax(model(x).float(), dim=1)[:, target["y"]]
        return p.cpu().numpy()[:, None]

    image_masker = shap.maskers.Image(masker, shape=(h, w, c))
    explainer = shap.PartitionExplainer(f, image_masker)
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    if scale != 1.0:
        hwc = np.rint(hwc * scale).astype(np.float32)
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        target["y"] = int(targets[i])
        np.random.seed([seed, first_index + i])  # shap breaks exact priority ties with np.random.randn
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


class _Progress:
    """tqdm bar over images that also shows evaluations per second."""

    def __init__(self, total: int, max_evals: int):
        self.bar = tqdm(total=total, desc="attribution maps", unit="img", smoothing=0.05, mininterval=2)
        self.max_evals, self.t0, self.done = max_evals, time.perf_counter(), 0

    def update(self, n: int = 1, computed: bool = True):
        if computed:
            self.done += n
            rate = self.done * self.max_evals / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} evals/s", refresh=False)
        self.bar.update(n)

    def close(self):
        self.bar.close()


def shard_maps(model, x, y, lo, kw, threads: int | None = None) -> np.ndarray:
    """One shard's maps (impactx.attribution.attribute, the method in kw): a pure function of its inputs,
    so it can run anywhere and be retried."""
    from impactx.attribution import attribute
    from impactx.data import to_float

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # in every worker process too: see impactx.cli.run_stage
    return attribute(model, to_float(x), y, first_index=lo, **kw)


def local_runner(workers: int = 1):
    """Runs shard jobs here (workers=1) or in `workers` processes with cpu_count // workers threads each
    (for more cores than one process's threads use well)."""

    def run(jobs: list[tuple], on_done, progress) -> None:
        if workers == 1 or len(jobs) < 2:
            for i, job in enumerate(jobs):
                on_done(i, shard_maps(*job[:-1], dict(job[-1], progress=progress)))
            return
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            futures = {ex.submit(shard_maps, *job, threads=threads): i for i, job in enumerate(jobs)}
            for done in as_completed(futures):
                on_done(futures[done], done.result())
                progress.update(len(jobs[futures[done]][1]))

    return run


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
    pool: int = 16,
    runner=None,
    method: str = "shap_partition",
    steps: int = 32,
    samples: int = 16,
    reuse: Sequence[Path] = (),
) -> tuple[np.ndarray, Path]:
    """Attribution maps (SHAP Partition by default; `method`, `steps`, `samples`: impactx.attribution) for
    uint8 images x (N×C×H×W) and labels y, in resumable shards.
    Returns the raw float32 maps and the work folder (delete it once the maps are saved).

    runner(jobs, on_done, progress) computes the missing shards (each job: shard_maps's arguments) and
    hands each result to on_done(job index, maps), which writes the shard atomically: local_runner() by
    default, impactx.fanout.dask_runner() for a Dask cluster.

    reuse: maps.json files of other seeds. Where one has this run's fingerprint (the work folder's name:
    a hash of the model's weights, the images, the labels and the settings), its maps.npy is returned and
    nothing is computed and no work folder is made. Only a teacher's maps can match another seed's: each
    seed's A has its own weights (and a teacher that is one seed's A matches that seed's own maps)."""
    check_masker(masker)
    settings = dict(max_evals=max_evals, batch_size=batch_size, masker=masker, shard_size=shard_size, seed=seed,
                    pool=pool)  # fmt: skip
    if method != "shap_partition":  # (SHAP's work folders keep their names)
        settings |= dict(method=method, steps=steps, samples=samples)
    work = Path(work_root) / _key(model, x, y, settings)[:16]
    for meta in reuse:
        maps = _finished_maps(meta, work.name, x.shape)
        if maps is not None:
            print(f"attribution: the same model, images and settings as {meta.parent}: its maps reused, none computed", flush=True)
            discard_work(work)  # shards of an earlier, interrupted run of these maps are not needed now
            return maps, work
    discard_abandoned(Path(work_root), work, seed)
    work.mkdir(parents=True, exist_ok=True)
    save_json(work / OWNER, {"seed": seed})
    n_shards = (len(x) + shard_size - 1) // shard_size
    shard_paths = [work / f"shard_{s:05d}.npy" for s in range(n_shards)]
    todo = [s for s, p in enumerate(shard_paths) if not p.exists()]
    if len(todo) < n_shards:
        print(f"attribution: resuming, {n_shards - len(todo)}/{n_shards} shards already in {work}", flush=True)
    cost = {"shap_partition": max_evals, "integrated_gradients": steps, "gradient_shap": samples}.get(method, 1)
    progress = _Progress(len(x), cost)
    progress.update(len(x) - sum(min(shard_size, len(x) - s * shard_size) for s in todo), computed=False)
    kw = dict(max_evals=max_evals, batch_size=batch_size, masker=masker, seed=seed, pool=pool, device=device,
              method=method, steps=steps, samples=samples)  # fmt: skip
    jobs = []
    for s in todo:
        lo, hi = s * shard_size, min((s + 1) * shard_size, len(x))
        jobs.append((model, x[lo:hi], y[lo:hi], lo, kw))

    def on_done(i: int, maps: np.ndarray) -> None:
        save_npy(shard_paths[todo[i]], maps)

    (runner or local_runner())(jobs, on_done, progress)
    progress.close()
    maps = np.concatenate([np.load(p) for p in shard_paths])
    return maps, work


def fingerprint(meta: Path) -> str | None:
    """The fingerprint a maps.json records (compute_maps's work folder name), or None."""
    try:
        return json.loads(Path(meta).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _finished_maps(meta: Path, key: str, shape: tuple) -> np.ndarray | None:
    """The maps.npy beside `meta` if that run had fingerprint `key` (checked before and after the read, in
    case its stage is rewriting them) and the shape of these images."""
    if fingerprint(meta) != key:
        return None
    try:
        maps = np.load(Path(meta).with_name("maps.npy"))
    except (OSError, ValueError):
        return None
    return maps if maps.shape == tuple(shape) and fingerprint(meta) == key else None


def save_maps(maps: np.ndarray, meta: dict, seed: int) -> None:
    """maps.npy (raw values) and maps.json (what produced them) of one seed, where layout puts them."""
    save_npy(layout.attribution_maps(seed), maps)
    save_json(layout.attribution_meta(seed), meta)


def class_mean_maps(maps: np.ndarray, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """S_k = mean of the (scaled) training maps of class k; zeros for a class with no image."""
    out = np.zeros((num_classes, *maps.shape[1:]), dtype=np.float32)
    for k in range(num_classes):
        if (labels == k).any():
            out[k] = maps[labels == k].mean(0)
    return torch.from_numpy(out)


def load_scaled_maps(path: Path) -> np.ndarray:
    """The training targets: maps.npy scaled per image to [-1, 1] (scale_maps)."""
    if not Path(path).exists():
        raise ImpactXError(f"{path} not found: run the attribution stage of this seed first (dvc repro)")
    return scale_maps(np.load(path))


OWNER = "owner.json"  # in each work folder: the seed whose maps it holds


def discard_abandoned(work_root: Path, current: Path, seed: int) -> list[Path]:
    """Remove the work folders of the same seed with other keys: shards of a run whose model, data or
    settings have changed since (or that DVC's run cache made unnecessary) can never be resumed. Other
    seeds' folders are left alone: their stages may be running now."""
    removed = []
    for folder in sorted(work_root.glob("*/")) if work_root.is_dir() else []:
        try:
            owner = json.loads((folder / OWNER).read_text())["seed"]
        except (OSError, ValueError, KeyError):
            continue  # not ours to judge (no owner file)
        if folder.resolve() != current.resolve() and owner == seed:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"attribution: removed {folder}, an abandoned run of seed {seed} (other model, data or settings)", flush=True)
            removed.append(folder)
    return removed


def discard_work(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
