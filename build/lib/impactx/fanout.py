"""SHAP shards on a Dask cluster, through Prefect's DaskTaskRunner: one retried Prefect task per shard.

Why Dask (prefect-dask) rather than Ray: the shards are independent numpy-in, numpy-out jobs, which is
what Dask's scheduler does with the least machinery. A LocalCluster needs nothing but `pip install`,
a real cluster is one scheduler address (`dask scheduler`, then `dask worker ADDRESS --resources GPU=1`
on each GPU machine), and GPU placement is a plain Dask resource. Only this module imports Prefect and
Dask: the local path (shards.executor: local) needs neither.

A shard task is a pure function (impactx.shards.shard_maps) that returns its maps; this process writes each
shard atomically as it arrives, so the workers need no shared filesystem, a task that is retried (or
re-run by Dask after its worker died) changes nothing, and the merged maps are byte-identical to the
single-process run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import uuid

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from impactx import ImpactXError
from impactx.shards import shard_maps

# Jobs hold a model and image arrays: they reach the flow through this table, not as flow parameters
# (which Prefect would serialise for its API), and reach the tasks as plain Dask arguments.
_PENDING: dict[str, tuple] = {}


def _restore_malloc() -> None:
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's mmap
    threshold: every large buffer the engine frees goes back to the OS and the next one page-faults in
    again, and a shard runs 2.6× slower (13.5 s against 5.2 s for 64 images here). Set both back."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to undo
        pass


def shard_in_worker(model, x, y, lo, kw, threads=None):
    _restore_malloc()
    return shard_maps(model, x, y, lo, kw, threads)


# prefect 3.8's overloads of task() take no positional function with options: a stub limit, not a bug
shard_task = task(shard_in_worker, name="shap-shard", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)  # type: ignore[call-overload]


@flow(name="impactx-shap-shards")
def shap_shards(batch: str) -> int:
    """Submit every shard of `batch` to the task runner's cluster; write each result as it completes."""
    import dask
    from prefect.futures import as_completed

    jobs, on_done, progress, threads, gpus = _PENDING.pop(batch)
    annotate = dask.annotate(resources={"GPU": gpus}) if gpus else contextlib.nullcontext()
    with annotate:
        futures = {
            shard_task.with_options(name=f"shap-shard-{job[3]}").submit(*job, threads): i for i, job in enumerate(jobs)
        }
    for done in as_completed(list(futures)):
        i = futures[done]
        on_done(i, done.result())
        progress.update(len(jobs[i][1]))
    return len(jobs)


def _prefect_env() -> dict:
    """The API the local workers report to: this process's, so that without a configured server they
    share its temporary one instead of each starting their own."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {"PREFECT_API_URL": str(client.api_url)}


def local_cluster_kwargs(workers: int, gpus_per_shard: float = 0.0) -> dict:
    """A LocalCluster of single-threaded worker processes that listens on loopback only: its scheduler and
    its dashboard (a random free port) are not reachable from other machines."""
    kw = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
          "dashboard_address": "127.0.0.1:0"}  # fmt: skip
    if gpus_per_shard:
        kw["resources"] = {"GPU": 1}
    return kw


def tls_security(tls):
    """Dask's Security for a client of a tls:// scheduler, from shards.dask_tls (ca_file, cert, key):
    encryption required, and the scheduler's certificate checked against the CA."""
    from distributed.security import Security

    for key in ("ca_file", "cert", "key"):
        if not os.path.isfile(getattr(tls, key)):
            raise ImpactXError(f"shards.dask_tls.{key}: {getattr(tls, key)} not found: point it at the PEM file")
    return Security(tls_ca_file=tls.ca_file, tls_client_cert=tls.cert, tls_client_key=tls.key, require_encryption=True)


def dask_runner(address: str | None = None, workers: int = 2, gpus_per_shard: float = 0.0, tls=None):
    """A compute_maps runner: shard jobs as Prefect tasks on the Dask cluster at `address` (tls: the
    client certificates of a tls:// scheduler, shards.dask_tls), or on a LocalCluster of `workers`
    single-threaded worker processes when address is None."""
    from prefect_dask import DaskTaskRunner

    security = tls_security(tls) if tls is not None else None  # missing files fail before any shard runs

    def run(jobs: list[tuple], on_done, progress) -> None:
        if not jobs:
            return
        if address:
            client = {"security": security}  # None: Dask's default, a plain tcp:// client
            task_runner, threads = DaskTaskRunner(address=address, client_kwargs=client), None  # its workers decide
        else:
            cluster = local_cluster_kwargs(workers, gpus_per_shard) | {"env": _prefect_env()}
            task_runner, threads = DaskTaskRunner(cluster_kwargs=cluster), max(1, (os.cpu_count() or 1) // workers)
        batch = uuid.uuid4().hex
        _PENDING[batch] = (jobs, on_done, progress, threads, gpus_per_shard)
        try:
            shap_shards.with_options(task_runner=task_runner)(batch)  # type: ignore[arg-type]  # prefect-dask's runner
        finally:
            _PENDING.pop(batch, None)

    return run
