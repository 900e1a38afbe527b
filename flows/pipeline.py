"""The DVC pipeline as Prefect flows: `pipeline` runs the stages of dvc.yaml in order, one task each;
`sweep` runs it once per λ.

DVC stays the cache of record: a task runs `dvc repro --single-item <stage>`, so an unchanged stage is
skipped exactly as with `dvc repro`. Parameter overrides are applied to params.yaml with DVC's own
`dvc exp run -S` code, and the finished run is saved with `dvc exp save`, so a scheduled run is an
ordinary, reproducible DVC experiment (`dvc exp show`). Every MLflow run a stage logs carries the Prefect
flow-run id as the tag `prefect_flow_run_id`.

    python flows/pipeline.py                                  # run once, here
    python flows/pipeline.py -S impactx.lambda=0.4 -S 'seeds=[0,1]'  # with overrides
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run

from impactx.io import atomic_write, exclusive_lock
from impactx.tracking import FLOW_RUN_ENV  # the stages' MLflow runs take the flow-run id from it

PROGRESS_EVERY = 30.0  # seconds between two logged progress-bar lines
DVC = str(Path(sys.executable).parent / "dvc")  # this environment's, whatever PATH the worker has


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


def _not_bad_input(task, task_run, state) -> bool:
    return not isinstance(state.result(raise_on_failure=False), BadInput)


@task(
    task_run_name="{stage}", retries=2, retry_delay_seconds=10, retry_condition_fn=_not_bad_input, cache_policy=NO_CACHE
)
def dvc_stage(stage: str, root: str) -> str:
    """`dvc repro --single-item <stage>`, its output in the task's log. Returns "ran" or "skipped"."""
    log = get_run_logger()
    env = {**os.environ, FLOW_RUN_ENV: str(flow_run.id or "")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the stages' `python` is ours
    cmd = [DVC, "repro", "--single-item", stage]
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
        skipped |= "didn't change, skipping" in line
        log.info(line)
    if proc.wait():
        if error:
            raise BadInput(f"stage {stage}: {error}")
        raise StageFailed(f"stage {stage} failed (dvc exit code {proc.returncode}); see the task log")
    return "skipped" if skipped else "ran"


@flow(name="impactx-pipeline", log_prints=True)
def pipeline(
    overrides: dict[str, Any] | list[str] | None = None, experiment: str | None = None, root: str = "."
) -> dict:
    """All stages in DAG order. `overrides` are `dvc exp run -S` settings ({"impactx.lambda": 0.4});
    the run is saved as DVC experiment `experiment` (default: prefect-<flow run name>)."""
    repo = Path(root).resolve()
    with checkout_lock(repo), params_restored(repo):
        if overrides:
            apply_overrides(repo, overrides)
        results = {stage: dvc_stage(stage, str(repo)) for stage in stages(repo)}
        name = experiment or f"prefect-{flow_run.name}"
        subprocess.run([DVC, "exp", "save", "--force", "--name", name], cwd=repo, check=True, capture_output=True)
    _log().info("saved as DVC experiment %s: %s", name, results)
    return results


@contextlib.contextmanager
def params_restored(repo: Path):
    """params.yaml byte for byte as it was before the run, whatever the run did to it: the overrides live
    in the saved experiment, and the next run (the nightly one, say) starts from params.yaml as committed."""
    path = repo / "params.yaml"
    before = path.read_bytes()
    try:
        yield
    finally:
        if path.read_bytes() != before:
            atomic_write(path, lambda tmp: tmp.write_bytes(before))


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
) -> dict:
    """The pipeline once per λ, over `seeds`, each a DVC experiment sweep-l<λ>. Stages that a setting does
    not touch are skipped by DVC: stage 1 and SHAP run once per seed for the whole sweep."""
    out = {}
    for lam in lambdas:
        name = f"sweep-l{lam}"
        out[name] = pipeline(
            overrides={**(overrides or {}), "seeds": list(seeds), "impactx.lambda": lam}, experiment=name, root=root
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run the impactx DVC pipeline as a Prefect flow.")
    ap.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE", help="as dvc exp run -S")
    ap.add_argument("--name", help="DVC experiment name")
    args = ap.parse_args(argv)
    state = pipeline(overrides=args.set_param or None, experiment=args.name, return_state=True)
    sys.exit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()
