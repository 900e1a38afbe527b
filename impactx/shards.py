"""The attribution stage's engine: maps for a whole training split in resumable shards, any R.

Large runs are split into shards of `shard_size` images written atomically under a work folder keyed by
the model, images and settings (its fingerprint), so a killed run resumes with the missing shards only
and the result is byte-identical to an uninterrupted one: an R is a pure function of its inputs and
(seed, image index) (impactx.attribution). A runner computes the missing shards: local_runner() here, in
one or more processes, or impactx.fanout.dask_runner() on a Dask cluster."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch

from impactx.attribution import Progress, Spec, attribute
from impactx.data import to_float
from impactx.io import save_json, save_npy

log = logging.getLogger(__name__)


def _key(model, x: np.ndarray, y: np.ndarray, settings: dict) -> str:
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().numpy().tobytes())
    h.update(x.tobytes())
    h.update(y.tobytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


Job = tuple[Any, np.ndarray, np.ndarray, int, dict]  # shard_maps's arguments: model, x, y, lo, kw


def shard_maps(model, x, y, lo, kw, threads: int | None = None) -> np.ndarray:
    """One shard's maps: attribute(model, x, y, first_index=lo, **kw), kw holding the Spec, the seed and
    the device. A pure function of its inputs, so it can run anywhere and be retried."""
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # in every worker process too: see impactx.stage.run_stage
    return attribute(model, to_float(x), y, first_index=lo, **kw)


def local_runner(workers: int = 1):
    """Runs shard jobs here (workers=1) or in `workers` processes with cpu_count // workers threads each
    (for more cores than one process's threads use well)."""

    def run(jobs: list[Job], on_done, progress) -> None:
        if workers == 1 or len(jobs) < 2:
            for i, (model, x, y, lo, kw) in enumerate(jobs):
                on_done(i, shard_maps(model, x, y, lo, {**kw, "progress": progress}))
            return
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            futures = {ex.submit(shard_maps, *job, threads): i for i, job in enumerate(jobs)}
            for done in as_completed(futures):
                on_done(futures[done], done.result())
                progress.update(len(jobs[futures[done]][1]))

    return run


def compute_maps(
    model,
    x: np.ndarray,
    y: np.ndarray,
    spec: Spec,
    *,
    shard_size: int,
    seed: int,
    device: torch.device,
    work_root: Path,
    runner=None,
    reuse: Sequence[Path] = (),
) -> tuple[np.ndarray, Path]:
    """The maps of `spec` (impactx.attribution) for uint8 images x (N×C×H×W) and labels y, in resumable
    shards. Returns the raw float32 maps and the work folder (delete it once the maps are saved).

    runner(jobs, on_done, progress) computes the missing shards (each job: shard_maps's arguments) and
    hands each result to on_done(job index, maps), which writes the shard atomically: local_runner() by
    default, impactx.fanout.dask_runner() for a Dask cluster.

    reuse: maps.json files of other seeds. Where one has this run's fingerprint (the work folder's name:
    a hash of the model's weights, the images, the labels and the settings), its maps.npy is returned and
    nothing is computed and no work folder is made. Only a teacher's maps can match another seed's: each
    seed's A has its own weights (and a teacher that is one seed's A matches that seed's own maps)."""
    settings = spec.describe() | {"shard_size": shard_size, "seed": seed}
    work = Path(work_root) / _key(model, x, y, settings)[:16]
    for meta in reuse:
        maps = _finished_maps(meta, work.name, x.shape)
        if maps is not None:
            log.info(
                "attribution: the same model, images and settings as %s: its maps reused, none computed", meta.parent
            )
            discard_work(work)  # shards of an earlier, interrupted run of these maps are not needed now
            return maps, work
    discard_abandoned(Path(work_root), work, seed)
    work.mkdir(parents=True, exist_ok=True)
    save_json(work / OWNER, {"seed": seed})
    n_shards = (len(x) + shard_size - 1) // shard_size
    shard_paths = [work / f"shard_{s:05d}.npy" for s in range(n_shards)]
    todo = [s for s, p in enumerate(shard_paths) if not p.exists()]
    if len(todo) < n_shards:
        log.info("attribution: resuming, %d/%d shards already in %s", n_shards - len(todo), n_shards, work)
    progress = Progress(len(x), spec)
    progress.update(len(x) - sum(min(shard_size, len(x) - s * shard_size) for s in todo), computed=False)
    kw = dict(spec=spec, seed=seed, device=device)
    jobs: list[Job] = []
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
            log.info(
                "attribution: removed %s, an abandoned run of seed %d (other model, data or settings)", folder, seed
            )
            removed.append(folder)
    return removed


def discard_work(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
