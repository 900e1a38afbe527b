"""The DVC pipeline as Prefect flows: `pipeline` runs the stages of dvc.yaml, one task each, in order or
(`workers` > 1) every stage as soon as the stages it reads are done, up to `workers` at once; `sweep` runs
it once per λ.

DVC stays the cache of record: a task runs `dvc repro --single-item <stage>`, so an unchanged stage is
skipped exactly as with `dvc repro`. Parameter overrides are applied to params.yaml with DVC's own
`dvc exp run -S` code, and the finished run is saved with `dvc exp save`, so a scheduled run is an
ordinary, reproducible DVC experiment (`dvc exp show`). Every MLflow run a stage logs carries the Prefect
flow-run id as the tag `prefect_flow_run_id`.

    python flows/pipeline.py                                  # run once, here
    python flows/pipeline.py -S impactx.lambda=0.4 -S 'seeds=[0,1]'  # with overrides
    python flows/pipeline.py --workers 2                      # two stages at once (CPU: the cores split)
    python flows/pipeline.py --gpus 0,1,2,3                   # one stage per GPU at once
    python flows/pipeline.py --remote                         # results shared through the default DVC remote
    python flows/pipeline.py --predict                        # the wall time for 1, 2, 4, 8 workers, from the last run

Fan-out: DVC runs one stage at a time in a workspace, so each worker slot is a git worktree beside the
checkout (../.<name>-slot<i>) that shares its DVC cache. A slot gets the checkout's files (params.yaml,
dvc.lock, code) and the outputs its stage reads (`dvc checkout`), runs `dvc repro --single-item <stage>`
there (its outputs and run-cache entry land in the shared cache), and the checkout then takes the result
with its own `dvc repro --single-item <stage>`, which DVC's run cache restores without running it: the
checkout ends with the outputs and dvc.lock of a sequential `dvc repro`, nothing computed twice. A stage
that writes nothing (check_params) or writes outputs git keeps (compare: cache: false) runs in the checkout
itself, since the run cache cannot restore it. A failed stage stops its descendants only.

Every run records each stage's time (layout.STAGE_TIMES); impactx.schedule turns them into the critical
path and the wall time predicted for more workers (`--predict`, and the end of each run's log).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Completed
from prefect.task_runners import ThreadPoolTaskRunner

from impactx import ImpactXError, layout, threadprobe
from impactx.io import atomic_write, exclusive_lock
from impactx.schedule import fill, load_times, record_times
from impactx.schedule import table as scaling_table
from impactx.threadprobe import THREAD_VARS
from impactx.tracking import FLOW_RUN_ENV, PROJECT_ENV  # the stages' MLflow runs: the flow-run id, the project

PROGRESS_EVERY = 30.0  # seconds between two logged progress-bar lines
MAX_SLOTS = 64  # the task runner's threads: the most worker slots one flow run can use
DONE = ("ran", "skipped")  # a stage's result when its outputs are in the checkout
DVC = str(Path(sys.executable).parent / "dvc")  # this environment's, whatever PATH the worker has
# A CPU slot gives a `threads: split` stage (dvc.yaml's meta) a share of the threads of every pool it may start
# (THREAD_VARS: torch's OpenMP, MKL, numpy's OpenBLAS), where this machine's forward passes are thread-invariant
# (splittable). Any other stage keeps the threads a sequential `dvc repro` gives (its bytes depend on them), with
# OpenMP's idle threads sleeping instead of spinning (SLOT_ENV): two stages side by side with two threads each took
# 101 s spinning, 43 s sleeping, 38 s with one thread each (attribution, digits, a 2-core machine).
SPLIT = ("threads", "split")  # dvc.yaml `meta: {threads: split}`: the stage's code gives the same bytes at any count
SLOT_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}  # every CPU slot's stages (unless this process's environment sets it)


class BadInput(RuntimeError):
    """A stage rejected its input (its one-line `error: ...`): running it again cannot help."""


class StageFailed(RuntimeError):
    """A stage crashed or was killed: worth a retry."""


def stages(root: Path) -> list[str]:
    """Every stage of dvc.yaml with foreach/matrix expanded (baseline@0, train@impactx-0, ...), in file
    order, which is the DAG's order."""
    out = subprocess.run([DVC, "stage", "list", "--name-only"], cwd=root, capture_output=True, text=True)
    if out.returncode:
        raise BadInput(
            f"dvc stage list failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
        )
    return out.stdout.split()


def override_args(overrides: dict[str, Any] | list[str]) -> list[str]:
    """{"impactx.lambda": 0.4, "attribution.shap_partition.masker": "blur(8,8)"} -> Hydra overrides, as `dvc exp run -S` takes them
    (a list is taken as such overrides already)."""
    if isinstance(overrides, list):
        return overrides

    def value(v):
        if isinstance(v, str):
            return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
        if v is None:
            return "null"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(value(x) for x in v) + "]"
        return repr(v)

    return [f"{k}={value(v)}" for k, v in overrides.items()]


def apply_overrides(root: Path, overrides: dict[str, Any] | list[str]) -> None:
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    dvc_apply_overrides(root / "params.yaml", override_args(overrides))


def stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with `extra`, and this venv first on PATH: the stages' `python` is ours.
    DVC's analytics daemon is off unless the environment asks for it: the flow starts two DVC processes a
    stage, each spawning one."""
    env = {"DVC_NO_ANALYTICS": "1", **os.environ, **(extra or {})}  # the daemon: 0.5 s of CPU per DVC command
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _not_bad_input(task, task_run, state) -> bool:
    return not isinstance(state.result(raise_on_failure=False), BadInput)


@task(
    task_run_name="{stage}", retries=2, retry_delay_seconds=10, retry_condition_fn=_not_bad_input, cache_policy=NO_CACHE
)
def dvc_stage(
    stage: str, root: str, env: dict[str, str] | None = None, upstream: list[str] | None = None, pull: bool = False
) -> tuple[str, float]:
    """`dvc repro --single-item <stage>` in `root`, its output in the task's log. Returns "ran", or "skipped"
    when nothing was computed (unchanged, or its outputs restored from the run cache), and its seconds.
    In a worker slot: `env` is the slot's (its threads or GPU), `upstream` the stages whose outputs it
    checks out first from the shared cache. `pull`: what the stage needs and the DVC cache lacks (its
    inputs, or its outputs when the remote's run cache has run it) comes from the default remote."""
    log, started = get_run_logger(), time.monotonic()
    env = stage_env({FLOW_RUN_ENV: str(flow_run.id or ""), **(env or {})})
    if upstream:
        out = subprocess.run([DVC, "checkout", *upstream], cwd=root, env=env, capture_output=True, text=True)
        if out.returncode:
            raise StageFailed(f"stage {stage}: dvc checkout {' '.join(upstream)} failed: {out.stderr.strip()[-300:]}")
    cmd = [DVC, "repro", "--single-item", *(["--pull"] if pull else []), stage]
    log.info("$ %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    error, skipped, last_progress = None, False, 0.0
    for line in proc.stdout:  # text mode: tqdm's \r updates arrive as lines too
        line = line.rstrip()
        if not line:
            continue
        if "it/s]" in line or "img/s" in line or "s/img]" in line:  # a progress bar: log one every 30 s
            if time.monotonic() - last_progress < PROGRESS_EVERY:
                continue
            last_progress = time.monotonic()
        if line.startswith("error: "):
            error = line
        skipped |= "didn't change, skipping" in line or "is cached - skipping run" in line  # not computed
        log.info(line)
    if proc.wait():
        if error:
            raise BadInput(f"stage {stage}: {error}")
        raise StageFailed(f"stage {stage} failed (dvc exit code {proc.returncode}); see the task log")
    seconds = time.monotonic() - started
    if skipped:  # shown as Cached in the UI: DVC computed nothing (unchanged, or restored from the run cache)
        return Completed(name="Cached", message="DVC: nothing to compute", data=("skipped", seconds))  # type: ignore[return-value]
    return "ran", seconds


def in_checkout(stage: str, repo: Path, pull: bool = False) -> tuple[str, float]:
    """dvc_stage run in the checkout, waited for: its (outcome, seconds), or its error raised."""
    return dvc_stage(stage, str(repo), pull=pull, return_state=True).result()


@flow(name="impactx-pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=MAX_SLOTS))
def pipeline(
    overrides: dict[str, Any] | list[str] | None = None,
    experiment: str | None = None,
    root: str = ".",
    workers: int = 1,
    gpus: list[str] | None = None,
    remote: bool = False,
) -> dict:
    """All stages of the DAG. `overrides` are `dvc exp run -S` settings ({"impactx.lambda": 0.4});
    the run is saved as DVC experiment `experiment` (default: prefect-<flow run name)). `workers` > 1 runs
    up to that many stages at once, each in a worker slot (the CPU's cores split between them); `gpus`
    (["0", "1"]) gives one slot per GPU instead, each slot's stages seeing that GPU only. `remote`: the
    default DVC remote is pulled from first (outputs and run cache) and by every stage, so what another
    machine computed is restored, not recomputed, and this run's results are pushed to it at the end."""
    if gpus:
        workers = len(gpus)
    if not 1 <= workers <= MAX_SLOTS:
        raise BadInput(f"workers must be between 1 and {MAX_SLOTS} (got {workers}): give --workers N")
    repo = Path(root).resolve()
    with checkout_lock(repo), workspace_restored(repo, bool(overrides)):
        if overrides:
            apply_overrides(repo, overrides)
        if remote:
            pull(repo)
        timed: dict[str, dict] = {}  # stage -> its outcome and measured time, for impactx.schedule
        try:
            if workers == 1:
                results = {}
                for stage in stages(repo):
                    results[stage], seconds = in_checkout(stage, repo, remote)
                    timed[stage] = _timing(results[stage], seconds, 0.0, 1)
            else:
                results = fan_out(repo, workers, gpus, timed, pull=remote)
        finally:  # a failed run's finished stages too
            ran = {s: t for s, t in timed.items() if t.pop("outcome") == "ran"}
            record_times(repo / layout.STAGE_TIMES, ran)
        if remote:
            push(repo)
        name = experiment or f"prefect-{flow_run.name}"
        kept = [a for f in kept_outputs(repo) if (repo / f).exists() for a in ("-I", f)]  # git's outputs too
        subprocess.run(
            [DVC, "exp", "save", "--force", "--name", name, *kept], cwd=repo, check=True, capture_output=True
        )
        table = repo / layout.TABLE_MD  # this run's, before an override run gives the workspace back
        if table.exists():  # the Prefect UI's Artifacts tab: Table 2 of this run
            create_markdown_artifact(
                markdown=table.read_text(), key="impactx-comparison", description=f"Table 2 ({name})"
            )
    _log().info("saved as DVC experiment %s: %s", name, results)
    with contextlib.suppress(ImpactXError):  # a stage never timed yet (all cached): nothing to predict from
        _log().info("from the recorded stage times:\n%s", scaling(repo))
    return results


def split_threads(root: Path) -> set[str]:
    """The stages dvc.yaml marks `meta: {threads: split}`: their outputs do not depend on the thread count."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(".") as repo:
        return {s.addressing for s in repo.index.stages if (s.meta or {}).get(SPLIT[0]) == SPLIT[1]}


def threads_for(stage: str, split: set[str], busy: int, workers: int) -> dict[str, str]:
    """A CPU slot's thread settings for `stage` when `busy` stages (it included) are running or ready: a
    `threads: split` stage gets its share of the threads a sequential stage has (this environment's
    OMP_NUM_THREADS, else one per core), all of them when it runs alone; any other stage inherits them."""
    if stage not in split:
        return {}
    return dict.fromkeys(THREAD_VARS, str(max(1, sequential_threads() // max(1, min(workers, busy)))))


def sequential_threads() -> int:
    """The threads a stage of a sequential `dvc repro` gets here: OMP_NUM_THREADS, else one per core."""
    return int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1


def splittable(root: Path, gpus: list[str] | None) -> set[str]:
    """The stages a CPU slot may give fewer threads: the `threads: split` ones, if this machine's forward
    passes give the same bytes at one thread as at the sequential count (impactx.threadprobe, with the
    checkout's backbone); else none, and the log says why. GPU slots split nothing."""
    if gpus:
        return set()
    backbone = (yaml.safe_load((root / "params.yaml").read_text()) or {}).get("model", {}).get("backbone", "lenet5")
    n = sequential_threads()
    try:
        same = threadprobe.invariant(n, str(backbone), cwd=root)
    except subprocess.CalledProcessError as e:
        _log().info("thread probe failed (%s): every stage keeps %d threads", e.stderr.strip()[-200:], n)
        return set()
    if not same:
        _log().info(
            "this machine's forward passes differ in their last bits at 1 and %d threads (impactx.threadprobe):"
            " every stage keeps %d threads, so the outputs are a sequential dvc repro's", n, n,
        )  # fmt: skip
        return set()
    return split_threads(root)


def dag(root: Path) -> tuple[dict[str, list[str]], set[str]]:
    """Every stage (foreach/matrix expanded) → the stages whose outputs it reads, in dvc.yaml's order; and
    the stages DVC's run cache can restore (they have outputs; not always_changed; every output cached,
    none persistent). The others run in the checkout."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(".") as repo:  # stage names (addressing) relative to the checkout
        graph = repo.index.graph
        ups = {s.addressing: sorted(u.addressing for u in graph.successors(s)) for s in graph.nodes}
        cacheable = {  # an output git keeps (cache: false) is not restored from the run cache: it would run twice
            s.addressing
            for s in graph.nodes
            if s.outs and not s.always_changed and all(o.use_cache and not o.persist for o in s.outs)
        }
        order = [s.addressing for s in repo.index.stages]
    return {s: ups[s] for s in order}, cacheable


class Slot(NamedTuple):
    """A worker slot: a git worktree beside the checkout sharing its DVC cache, and its stages' environment."""

    path: Path
    env: dict[str, str]
    cpu: bool  # threads set per stage (threads_for); else the slot owns a GPU


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def open_slots(repo: Path, workers: int, gpus: list[str] | None = None) -> list[Slot]:
    """`workers` worktrees ../.<checkout>-slot<i> at HEAD (beside the checkout, so a relative path such as
    ../shared/data resolves the same), each using the checkout's DVC cache; their stages log to the
    checkout's MLflow store and share its compile cache."""
    cache = subprocess.run([DVC, "cache", "dir"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    shared = {PROJECT_ENV: str(repo), "TORCHINDUCTOR_CACHE_DIR": str((repo / layout.COMPILE_CACHE).resolve())}
    slots = []
    for i in range(workers):
        path = repo.parent / f".{repo.name}-slot{i}"
        close_slot(repo, path)  # a crashed run's
        made = _git(repo, "worktree", "add", "--detach", "--force", str(path), "HEAD")
        if made.returncode:
            raise BadInput(f"git worktree add {path} failed ({made.stderr.strip()}): commit once, or give --workers 1")
        subprocess.run([DVC, "config", "--local", "cache.dir", cache], cwd=path, check=True, capture_output=True)
        own = (
            {"CUDA_VISIBLE_DEVICES": str(gpus[i])}
            if gpus
            else {k: v for k, v in SLOT_ENV.items() if k not in os.environ}
        )
        slots.append(Slot(path, {**shared, **own}, not gpus))
    return slots


def close_slot(repo: Path, path: Path) -> None:
    if path.exists():
        if _git(repo, "worktree", "remove", "--force", str(path)).returncode:
            shutil.rmtree(path, ignore_errors=True)
    _git(repo, "worktree", "prune")


def sync(repo: Path, slot: Path) -> None:
    """The slot's files made the checkout's: every file git sees there (tracked, or new and not ignored),
    params.yaml and dvc.lock among them; a file deleted there is deleted here. Outputs travel by DVC."""
    listed = _git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout.split("\0")
    for rel in filter(None, listed):
        src, dst = repo / rel, slot / rel
        if not src.is_file():
            if not src.exists() and dst.is_file():
                dst.unlink()
            continue
        s = src.stat()
        if dst.is_file() and ((d := dst.stat()).st_size, d.st_mtime_ns) == (s.st_size, s.st_mtime_ns):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def restore(repo: Path, stages: list[str]) -> None:
    """The stages the slots ran, taken into the checkout in one `dvc repro --single-item` (in the DAG's order,
    so dvc.lock lists them as a sequential `dvc repro` does): DVC's run cache restores their outputs and
    dvc.lock entries without running them."""
    if not stages:
        return
    out = subprocess.run([DVC, "repro", "--single-item", *stages], cwd=repo, capture_output=True, text=True,
                         env=stage_env())  # fmt: skip
    if out.returncode:
        raise StageFailed(f"taking {', '.join(stages)} into the checkout failed: {out.stderr.strip()[-300:]}")
    if ran := [s for s in stages if f"Running stage '{s}'" in out.stdout]:  # DVC says so only when it runs one
        _log().warning("not in the run cache, so run again in the checkout: %s", ", ".join(ran))


def read_lock(root: Path) -> dict[str, Any]:
    """dvc.lock's stage entries (none before a first run)."""
    path = root / "dvc.lock"
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.exists() else {}


def give_lock(slot: Path, entries: dict[str, Any]) -> None:
    """The slot's dvc.lock: the checkout's with `entries` (stages other slots ran, not yet restored) over it,
    so the slot checks out their outputs from the shared cache."""
    if entries:
        body = {"schema": "2.0", "stages": {**read_lock(slot), **entries}}
        (slot / "dvc.lock").write_text(yaml.safe_dump(body, sort_keys=False))


def fan_out(
    repo: Path, workers: int, gpus: list[str] | None = None, timed: dict | None = None, pull: bool = False
) -> dict[str, str]:
    """Every stage as soon as its upstream stages are done, up to `workers` at once, each in a slot.
    A slot's stage reaches the stages after it through the shared cache and the dvc.lock entry the loop
    hands on; the checkout takes the slots' stages in batches, one `dvc repro` each (before a stage that runs
    in the checkout, and at the end), so it never holds up the scheduling.
    A failed stage's descendants are "upstream failed"; the others finish; then the first error is raised.
    `timed` gets each finished stage's seconds (and its share of a batch restore); `pull` as dvc_stage's."""
    timed = {} if timed is None else timed
    ups, cacheable = dag(repo)
    split = splittable(repo, gpus)
    results: dict[str, str] = {}
    errors: dict[str, BaseException] = {}
    unrestored: dict[str, Any] = {}  # stage -> its dvc.lock entry, for the stages slots ran and the checkout lacks

    def take_in() -> None:  # the unrestored stages into the checkout, in the DAG's order
        batch = [s for s in ups if s in unrestored]
        started = time.monotonic()
        try:
            restore(repo, batch)
        except StageFailed as e:
            results.update(dict.fromkeys(batch, "failed"))
            errors.update(dict.fromkeys(batch, e))
        for s in batch:
            timed[s]["restore"] = round((time.monotonic() - started) / len(batch), 3)
        unrestored.clear()

    slots = open_slots(repo, workers, gpus)
    free, running = list(slots), {}
    try:
        while True:
            progressed = False
            ready = {
                s
                for s, u in ups.items()
                if s not in results and s not in running and all(results.get(x) in DONE for x in u)
            }
            for stage, upstream in ups.items():
                if stage in results or stage in running or not free:
                    continue
                if any(results.get(u) in ("failed", "upstream failed") for u in upstream):
                    results[stage], progressed = "upstream failed", True
                    continue
                if not all(results.get(u) in DONE for u in upstream):
                    continue
                if stage not in cacheable:  # nothing the run cache restores: it runs in the checkout
                    take_in()
                    try:
                        results[stage], seconds = in_checkout(stage, repo, pull)
                        timed[stage] = _timing(results[stage], seconds, 0.0, workers)
                    except (BadInput, StageFailed) as e:
                        results[stage], errors[stage] = "failed", e
                    progressed = True
                    continue
                slot = free.pop(0)
                sync(repo, slot.path)
                give_lock(slot.path, unrestored)
                busy = len(running) + len(
                    ready - set(running)
                )  # this stage, the running ones, those waiting for a slot
                env = {**slot.env, **(threads_for(stage, split, busy, workers) if slot.cpu else {})}
                future = dvc_stage.submit(stage, str(slot.path), env, [u for u in upstream if u in cacheable], pull)
                running[stage] = (future, slot)
            if not running:
                if progressed:
                    continue
                break
            finished = next(as_completed([f for f, _ in running.values()]))
            stage = next(s for s, (f, _) in running.items() if f.task_run_id == finished.task_run_id)
            future, slot = running.pop(stage)
            free.append(slot)
            outcome = future.result(raise_on_failure=False)
            if isinstance(outcome, BaseException):
                results[stage], errors[stage] = "failed", outcome
                continue
            results[stage], seconds = outcome
            timed[stage] = _timing(results[stage], seconds, 0.0, workers)
            unrestored[stage] = read_lock(slot.path)[stage]
        take_in()
    finally:
        for slot in slots:
            close_slot(repo, slot.path)
    _log().info("stages: %s", results)
    if errors:
        raise next(iter(errors.values()))
    return results


def _timing(outcome: str, seconds: float, restore: float, workers: int) -> dict:
    return {"outcome": outcome, "seconds": round(seconds, 3), "restore": round(restore, 3), "workers": workers}


def _remote(repo: Path, verb: str) -> tuple[int, str, str]:
    """`dvc <verb> --run-cache` against the default remote: its exit code, output, and the line that says
    what happened (DVC's last ERROR line, not the support footer it prints after it)."""
    out = subprocess.run([DVC, verb, "--run-cache"], cwd=repo, capture_output=True, text=True, env=stage_env())
    said = (out.stdout + out.stderr).strip()
    lines = [line for line in said.splitlines() if line.strip() and "Having any troubles" not in line]
    errors = [line for line in lines if line.startswith("ERROR")]
    return out.returncode, said, (errors or lines or [f"exit {out.returncode}"])[-1]


def pull(repo: Path) -> None:
    """Outputs and run cache from the DVC remote into the shared cache, before any stage: a stage that
    another machine already ran is then restored from the run cache instead of run. Outputs the remote
    does not have yet are not an error: their stages will compute them."""
    code, said, last = _remote(repo, "pull")
    if code and "missing" not in said.lower():  # not DVC's "missing cache files": the remote is wrong
        raise BadInput(f"dvc pull from the default remote failed: {last}; check `dvc remote list`")
    _log().info("dvc pull --run-cache: %s", last)


def push(repo: Path) -> None:
    """This run's outputs and run-cache entries to the default DVC remote, for the other machines."""
    code, _, last = _remote(repo, "push")
    if code:
        raise StageFailed(
            f"dvc push to the default remote failed ({last}): check its URL with `dvc remote list`; the results"
            " are in this checkout's DVC cache, so `dvc push --run-cache` sends them once the remote is reachable"
        )
    _log().info("dvc push --run-cache: %s", last)


@contextlib.contextmanager
def workspace_restored(repo: Path, overrides: bool):
    """params.yaml byte for byte as it was before the run, whatever the run did to it: the overrides live
    in the saved experiment, and the next run (the nightly one, say) starts from params.yaml as committed.
    After a run with overrides, dvc.lock, the outputs git keeps (cache: false) and, from the DVC cache,
    every other output are given back too, so the workspace and `dvc status` are as before the run (a
    workspace with no dvc.lock yet keeps the run's outputs and lock: there is nothing to give back)."""
    give_back = overrides and (repo / "dvc.lock").is_file()  # a workspace that never ran keeps the run's
    files = ["params.yaml", *(["dvc.lock", *kept_outputs(repo)] if give_back else [])]
    before = {f: (repo / f).read_bytes() if (repo / f).is_file() else None for f in files}
    try:
        yield
    finally:
        for f, data in before.items():
            path = repo / f
            if data is None:
                path.unlink(missing_ok=True)
            elif not path.is_file() or path.read_bytes() != data:
                atomic_write(path, lambda tmp, data=data: tmp.write_bytes(data))
        if give_back:
            out = subprocess.run([DVC, "checkout"], cwd=repo, capture_output=True, text=True, env=stage_env())
            if out.returncode:
                _log().warning("dvc checkout after the run: %s", (out.stderr.strip() or "failed").splitlines()[-1])


def kept_outputs(root: Path) -> list[str]:
    """The outputs git keeps rather than DVC's cache (cache: false: the tables, metrics and plots)."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(".") as repo:
        return sorted({str(o.def_path) for s in repo.index.stages for o in s.outs if not o.use_cache})


def _log() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (shown in the Prefect UI), or this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def checkout_lock(repo: Path):
    """One flow run at a time in a checkout: deployments that share a clone (nightly, lambda-sweep) wait
    for each other instead of rewriting each other's params.yaml."""
    wait = lambda path: _log().info("another flow run holds %s: waiting for it to finish", path)
    return exclusive_lock(repo / ".dvc" / "tmp" / "impactx-flow.lock", on_wait=wait)


@flow(name="impactx-sweep", log_prints=True)
def sweep(
    lambdas: list[float] = [0.2, 0.6, 1.0, 1.4],  # noqa: B006 (Prefect parameters: shown and edited in the UI)
    seeds: list[int] = [0, 1, 2],  # noqa: B006
    overrides: dict[str, Any] | None = None,
    root: str = ".",
    workers: int = 1,
    remote: bool = False,
) -> dict:
    """The pipeline once per λ, over `seeds`, each a DVC experiment sweep-l<λ>, `workers` stages at once
    (`remote`: results shared through the default DVC remote, as pipeline's).
    Stages that a setting does not touch are skipped by DVC: stage 1 and SHAP run once per seed."""
    out = {}
    for lam in lambdas:
        name = f"sweep-l{lam}"
        out[name] = pipeline(
            overrides={**(overrides or {}), "seeds": list(seeds), "impactx.lambda": lam},
            experiment=name,
            root=root,
            workers=workers,
            remote=remote,
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run the impactx DVC pipeline as a Prefect flow.")
    ap.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE", help="as dvc exp run -S")
    ap.add_argument("--name", help="DVC experiment name")
    ap.add_argument("--workers", type=int, default=1, help="stages at once, each in a worker slot (default 1)")
    ap.add_argument("--gpus", help="one slot per GPU: CUDA device ids, e.g. 0,1,2,3 (instead of --workers)")
    ap.add_argument("--remote", action="store_true",
                    help="share results through the default DVC remote: pull first (outputs and run cache), push at the end")  # fmt: skip
    ap.add_argument("--predict", action="store_true",
                    help="run nothing: print the critical path and the wall time predicted for 1, 2, 4, 8 workers from the recorded stage times")  # fmt: skip
    ap.add_argument("--times", type=Path, help=f"--predict from this stage-times file (default {layout.STAGE_TIMES})")
    args = ap.parse_args(argv)
    if args.predict:
        sys.exit(predict(Path("."), args.times))
    gpus = args.gpus.split(",") if args.gpus else None
    state = pipeline(overrides=args.set_param or None, experiment=args.name, workers=args.workers, gpus=gpus,
                     remote=args.remote, return_state=True)  # fmt: skip
    sys.exit(0 if state.is_completed() else 1)


def predict(root: Path, times_file: Path | None = None) -> int:
    """Print impactx.schedule's table for this checkout's DAG (params.yaml as it is now) from the times the
    flow recorded (a foreach stage not measured takes its family's time: seeds [0..4] from a one-seed run)."""
    try:
        print(scaling(root, times_file))
    except ImpactXError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def scaling(root: Path, times_file: Path | None = None) -> str:
    """impactx.schedule's table for the checkout's DAG from the recorded (or the given) stage times."""
    ups, cacheable = dag(root)
    return scaling_table(ups, fill(list(ups), load_times(times_file or root / layout.STAGE_TIMES)), cacheable)


if __name__ == "__main__":
    main()
